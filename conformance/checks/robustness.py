"""Robustness of the candidate's claims: tied weights and unsupported inputs never give silent answers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.calling import CandidateError, call_candidate
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


TIED_ENTRY = CaseEntry("tied-linear[mse]", tied_problem, builtin=True)


def _weight_tying(session: Session, entry: CaseEntry):
    problem = session.fresh(entry)
    modes = session.supported_bias_modes(entry, "type-2", "expand")
    if not modes:
        raise CheckSkipped("not supported: type-2 KFAC")
    try:
        result = session.call(problem, Request("type-2", "expand", bias=modes[0]))
    except CandidateError as raised:
        session.side_effects.extend(raised.side_effects)
        return Measurement(details={"raised": str(raised)})
    except CandidateRefused as refused:
        return Measurement(details={"raised": str(refused)})
    measurement = Measurement()
    exact = session.exact(entry, "ggn")
    compare_blocks(
        result,
        exact,
        ["shared"],
        tolerance_for(problem),
        measurement,
        "a module applied twice: raise, or be exact",
    )
    return measurement


class UnsupportedLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(2, 2, 2)
        self.head = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv1d(x).mean(-1))


def _unsupported_layer_problem() -> Problem:
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's global RNG
        torch.manual_seed(0)
        X = torch.randn(3, 2, 4, dtype=torch.float64)
        model = UnsupportedLayerNet().double()
        y = torch.randn(3, 2, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["conv1d", "head"], "unsupported-layer[conv1d]")


def _unsupported_loss_problem() -> Problem:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        X = torch.randn(3, 4, dtype=torch.float64)
        model = nn.Sequential(nn.Linear(4, 2)).double()
        y = torch.randn(3, 2, dtype=torch.float64)
    return Problem(
        model,
        nn.L1Loss(),
        [(X, y)],
        ["0"],
        "unsupported-loss[l1]",
    )


def _expect_raise(what: str):
    def run(session: Session, entry: CaseEntry):
        problem = session.fresh(entry)
        if session.candidate.capabilities.unsupported(problem, Request()) is None:
            raise CheckSkipped(f"the candidate claims to support {what}")
        try:
            result, side_effects = call_candidate(
                session.candidate, problem, Request(), check_capabilities=False
            )
        except CandidateError as raised:
            session.side_effects.extend(raised.side_effects)
            return Measurement(details={"raised": str(raised)})
        except CandidateRefused as refused:
            return Measurement(details={"raised": str(refused)})
        except CheckFailed as invalid:
            raise CheckFailed(
                f"returned an invalid result for {what} it does not claim to support, instead of "
                f"raising ({invalid.message})"
            ) from None
        session.side_effects.extend(side_effects)
        raise CheckFailed(
            f"returned an answer for {what} it does not claim to support, instead of raising "
            f"(layers {sorted(result)})"
        )

    return run


UNSUPPORTED_LAYER_ENTRY = CaseEntry(
    "unsupported-layer[conv1d]", _unsupported_layer_problem, builtin=True
)
UNSUPPORTED_LOSS_ENTRY = CaseEntry("unsupported-loss[l1]", _unsupported_loss_problem, builtin=True)

CHECKS = [
    Check(
        "weight-tying/exact-or-raises",
        "a module applied twice gives its exact GGN block or an exception",
        "KFAC assumes each layer is used once; silent answers for tied weights are wrong",
        lambda entry: entry is TIED_ENTRY,
        _weight_tying,
        on_builtin=True,
    ),
    Check(
        "unsupported/layer",
        "a layer outside the claimed capabilities makes the candidate raise",
        "a plausible wrong number is worse than an error",
        lambda entry: entry is UNSUPPORTED_LAYER_ENTRY,
        _expect_raise("a Conv1d layer"),
        on_builtin=True,
    ),
    Check(
        "unsupported/loss",
        "a loss outside the claimed capabilities makes the candidate raise",
        "a plausible wrong number is worse than an error",
        lambda entry: entry is UNSUPPORTED_LOSS_ENTRY,
        _expect_raise("L1Loss"),
        on_builtin=True,
    ),
]
BUILTIN_ENTRIES = [TIED_ENTRY, UNSUPPORTED_LAYER_ENTRY, UNSUPPORTED_LOSS_ENTRY]
