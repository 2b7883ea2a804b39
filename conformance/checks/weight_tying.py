"""Weight tying: a module applied twice gives its exact block or an exception, never a silent
answer (KFAC assumes each layer is used once), for every Fisher type and approximation a
candidate claims. An MC answer must be exact on average: the t-tests of ``mc/unbiased``.

Forward-only KFAC approximates no curvature, so a tied layer has no block to hold it to; it
has no check here (docs/coverage.md lists the exclusion).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfac_conformance.cases.architectures import tied_layers
from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    CheckSkipped,
    FuzzProperty,
    Measurement,
)
from kfac_conformance.checks.drawn import drawn, float64
from kfac_conformance.checks.mc_statistics import UNBIASED_SAMPLES, t_statistic
from kfac_conformance.checks.significance import critical_t
from kfac_conformance.comparison.blocks import kfac_pattern, restrict
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.calling import CandidateError
from kfac_conformance.execution.session import Session, compare_blocks, tolerance_for


class TiedTwice(nn.Module):
    """``head(shared(shared(x)))``: one Linear applied twice (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(self.shared(x)))


def tied_problem() -> Problem:
    generator = torch.Generator().manual_seed(0)
    model = TiedTwice().double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) / 2)
    X = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["shared", "head"], "tied-linear[mse]")


TIED_ENTRY = CaseEntry("tied-linear[mse]", tied_problem)
TIED_LAYER = "shared"
_CURVATURE = {"type-2": "ggn", "empirical": "empirical"}
_NAMES = {"ggn": "GGN", "empirical": "empirical Fisher"}
_APPROXIMATION_NAMES = {"kfac": "KFAC", "ekfac": "EKFAC"}
ANSWERED = (
    "the tied module got an answer that is not its exact block: a layer's uses were merged "
    "(or one was dropped) as if it were used once; raise, e.g. NotSupported, for a module "
    "called more than once in one forward pass"
)


def _tied(entry: CaseEntry) -> tuple[list[str], str]:
    """The tied layers and the flavour to ask for: the purpose-built problem's, or, on a
    fuzzer's drawn problem, its modules applied twice and the drawn flavour."""
    if entry.drawn_request is None:
        return [TIED_LAYER], "expand"
    return tied_layers(entry.case.architecture), entry.drawn_request.kfac_approx


def _requests(
    session: Session, entry: CaseEntry, fisher_type: str, approximation: str, seeds: range
) -> list[Request]:
    """The first claimed bias mode's request, once per seed (MC) or once; skip if unclaimed."""
    _, flavour = _tied(entry)
    modes = session.supported_bias_modes(entry, fisher_type, flavour, approximation)
    if not modes:
        raise CheckSkipped(f"not supported: {fisher_type} {_APPROXIMATION_NAMES[approximation]}")
    if fisher_type != "mc":
        return [Request(fisher_type, flavour, bias=modes[0], approximation=approximation)]
    return [
        Request("mc", flavour, UNBIASED_SAMPLES, seed, modes[0], approximation) for seed in seeds
    ]


def _answer(session: Session, problem: Problem, request: Request) -> tuple[dict | None, str]:
    """The candidate's answer, or ``None`` and what it raised (a refusal counts as raising)."""
    try:
        return session.call(problem, request), ""
    except CandidateError as raised:
        if raised.could_not_import:  # not the exception expected: an error
            raise
        session.side_effects.extend(raised.side_effects)
        return None, str(raised)
    except CandidateRefused as refused:
        return None, str(refused)


def _exact_or_raises(fisher_type: str, approximation: str):
    def measure(session: Session, entry: CaseEntry):
        problem = session.fresh(entry)
        (request,) = _requests(session, entry, fisher_type, approximation, range(1))
        result, raised = _answer(session, problem, request)
        if result is None:
            return Measurement(details={"raised": raised})
        measurement = Measurement()
        try:
            compare_blocks(
                result,
                session.exact(entry, _CURVATURE[fisher_type]),
                _tied(entry)[0],
                tolerance_for(problem),
                measurement,
                "a module applied twice: raise, or be exact",
            )
        except CheckFailed as failed:
            # on a tied module the cause is the answer itself; what the comparison saw follows
            failed.diagnosis = "; ".join(filter(None, [ANSWERED, failed.diagnosis]))
            raise
        return measurement

    return measure


def _unbiased_or_raises(approximation: str):
    def measure(session: Session, entry: CaseEntry):
        seeds = range(session.profile.mc_seeds)
        rows, target = [], None
        for request in _requests(session, entry, "mc", approximation, seeds):
            result, raised = _answer(session, session.fresh(entry), request)
            if result is None:
                return Measurement(details={"raised": raised})
            factors = result[TIED_LAYER]
            if target is None:
                ggn = session.exact(entry, "ggn")[TIED_LAYER]
                target = restrict(ggn, kfac_pattern(factors)).flatten()
            rows.append(factors.to_dense().detach().double().cpu().flatten())
        return _held_on_average(torch.stack(rows) - target, target)

    return measure


def _held_on_average(errors: Tensor, target: Tensor) -> Measurement:
    """``mc/unbiased``'s scale and direction t-tests of the errors of the tied block."""
    norm2 = (target @ target).item()
    half = len(errors) // 2
    direction = errors[:half].mean(0)
    statistics = {
        "scale": t_statistic(errors @ target / norm2, 1.0),
        "direction": t_statistic(
            errors[half:] @ direction / (direction.norm().item() * norm2**0.5 or 1.0), 1.0
        ),
    }
    # both tests at the family-wise level of mc/unbiased (Bonferroni over the two), with the
    # smaller sample's degrees of freedom for both: conservative for the scale test
    critical = critical_t(len(errors) - half - 1, len(statistics))
    measurement = Measurement()
    for what, t in statistics.items():
        measurement.record(abs(t), critical)
        if not abs(t) <= critical:
            raise CheckFailed(
                f"a module applied twice: MC is neither refused nor exact on average ({what} "
                f"test, |t| = {abs(t):.3g} > {critical:.3g} over {len(errors)} seeds); mean "
                f"estimate / GGN along it = {1 + (errors @ target).mean().item() / norm2:.4g}",
                observed=abs(t),
                tolerance=critical,
                diagnosis=ANSWERED,
            )
    return measurement


SOURCE = "KFAC assumes each layer is used once; silent answers for tied weights are wrong"
_IDS = {
    ("type-2", "kfac"): "weight-tying/exact-or-raises",  # the first: its id stays
    ("empirical", "kfac"): "weight-tying/empirical-exact-or-raises",
    ("mc", "kfac"): "weight-tying/mc-unbiased-or-raises",
    ("type-2", "ekfac"): "weight-tying/ekfac-type-2-exact-or-raises",
    ("empirical", "ekfac"): "weight-tying/ekfac-empirical-exact-or-raises",
    ("mc", "ekfac"): "weight-tying/ekfac-mc-unbiased-or-raises",
}


def _tying_check(fisher_type: str, approximation: str) -> Check:
    name = _APPROXIMATION_NAMES[approximation]
    if fisher_type == "mc":
        return Check(
            _IDS[fisher_type, approximation],
            f"a module applied twice gives MC {name} whose mean over seeds is its exact GGN "
            "block (the t-tests of mc/unbiased), or an exception",
            SOURCE,
            kind="statistical",
            measure=_unbiased_or_raises(approximation),
            own_cases=(TIED_ENTRY,),
        )
    which = "" if (fisher_type, approximation) == ("type-2", "kfac") else f" ({fisher_type} {name})"
    return Check(
        _IDS[fisher_type, approximation],
        f"a module applied twice gives its exact {_NAMES[_CURVATURE[fisher_type]]} block or an "
        f"exception{which}",
        SOURCE,
        kind="exact",
        measure=_exact_or_raises(fisher_type, approximation),
        own_cases=(TIED_ENTRY,),
        # the fuzzer's drawn networks with a module applied twice, where its defects show
        # beside layers of other kinds and sizes than the one purpose-built problem's
        fuzz=FuzzProperty(float64(drawn(fisher_type)), order=0, weight_tying=True),
    )


CHECKS = [_tying_check(*pair) for pair in _IDS]
