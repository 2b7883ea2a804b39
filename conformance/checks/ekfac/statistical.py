"""MC EKFAC's trace is unbiased on every layer: t-tests over seeds that need no access to the
drawn labels, Holm-corrected across layers and flavours."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from kfac_conformance.checks import mc
from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.checks.ekfac.calls import NEEDS_EKFAC, unclaimed_reason
from kfac_conformance.checks.ekfac.factors import flat_eigenvalues
from kfac_conformance.checks.mc_statistics import (
    UNBIASED_SAMPLES,
    layer_types,
    mc_requests,
    t_statistic,
)
from kfac_conformance.checks.significance import (
    FAMILY_ALPHA,
    Test,
    critical_t,
    holm_rejected,
    t_test,
)
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import Session


@dataclass(frozen=True)
class TraceStatistics:
    """One layer's trace t statistic in one flavour, and its mean ratio tr(EKFAC) / tr(GGN)."""

    layer: str
    flavour: str
    t: float
    mean_ratio: float
    seeds: int

    def test(self) -> Test:
        return t_test((self.layer, self.flavour), "trace", self.t, self.seeds - 1)


def mc_traces(
    session: Session, entry: CaseEntry, request: Request, seeds: range
) -> dict[str, Tensor]:
    """Every layer's ``tr(EKFAC)`` per seed, for ``request`` with ``UNBIASED_SAMPLES``."""
    traces: dict[str, list[float]] = {}
    problem = session.fresh(entry)  # restored by every call, as in block_estimates
    for seed in seeds:
        asked = dataclasses.replace(request, mc_samples=UNBIASED_SAMPLES, seed=seed)
        result = session.call(problem, asked)
        for layer in problem.layers:
            traces.setdefault(layer, []).append(flat_eigenvalues(result[layer]).sum().item())
    return {layer: torch.tensor(values, dtype=torch.float64) for layer, values in traces.items()}


def ggn_traces(session: Session, entry: CaseEntry) -> dict[str, float]:
    ggn = session.exact(entry, "ggn")
    return {layer: torch.trace(block.double().cpu()).item() for layer, block in ggn.items()}


def trace_statistics(
    traces: dict[str, Tensor], targets: dict[str, float], flavour: str
) -> tuple[list[TraceStatistics], list[str]]:
    """The t statistic of every layer whose GGN trace is nonzero, and the layers whose GGN
    trace is zero although an estimate's is not (relative to the largest GGN trace)."""
    statistics, nonzero = [], []
    largest = max(targets.values())
    for layer, estimates in traces.items():
        if targets[layer] > 0:
            z = estimates / targets[layer] - 1
            statistics.append(
                TraceStatistics(
                    layer, flavour, t_statistic(z, 1.0), 1 + z.mean().item(), len(estimates)
                )
            )
        elif not estimates.abs().max().item() <= 1e-12 * largest:
            nonzero.append(layer)
    return statistics, nonzero


def mc_trace_statistics(
    session: Session, entry: CaseEntry, seeds: range
) -> tuple[list[TraceStatistics], list[str]]:
    r"""Per layer and tested flavour, the t statistic of
    :math:`z_k = \mathrm{tr}(\mathrm{EKFAC}_k) / \mathrm{tr}(G) - 1` over ``seeds`` (MC EKFAC
    with ``UNBIASED_SAMPLES`` labels per datum, ``G`` the layer's exact GGN block); and the
    layers whose GGN trace is zero although an estimate's is not.

    :math:`\mathrm{tr}(\mathrm{EKFAC}) = \sum S = \mathrm{tr}(Q^\top F Q) = \mathrm{tr}(F)`
    for any orthonormal basis, so the estimate does not depend on the sampled basis, and
    :math:`E[\mathrm{tr}\,F_{MC}] = \mathrm{tr}(G)` because the MC Fisher is unbiased: a
    candidate that hides its labels is still held to its scale and normalisation, layer by
    layer. The flavours are those of :func:`~kfac_conformance.checks.mc_statistics.mc_requests`.
    """
    try:
        requests = mc_requests(session, entry, "ekfac")
    except CheckSkipped:
        raise CheckSkipped(unclaimed_reason(session, entry, "mc")) from None
    targets = ggn_traces(session, entry)
    if not max(targets.values()) > 0:
        raise CheckSkipped("the GGN is zero on this problem: there is nothing to estimate")
    statistics, nonzero = [], []
    for request in requests:
        traces = mc_traces(session, entry, request, seeds)
        found, missed = trace_statistics(traces, targets, request.kfac_approx)
        statistics += found
        nonzero += missed
    return statistics, nonzero


def _mc_trace(session: Session, entry: CaseEntry):
    seeds = range(session.profile.mc_seeds)
    statistics, nonzero = mc_trace_statistics(session, entry, seeds)
    if nonzero:
        raise CheckFailed(
            f"the GGN is zero on layers {nonzero}, but the trace of their MC EKFAC is not"
        )
    tests = [block.test() for block in statistics]
    critical = critical_t(tests[0].df, len(tests))  # every test has len(seeds) - 1
    measurement = Measurement(
        details={
            "mean_trace_ratios": {
                f"{block.layer} ({block.flavour})": block.mean_ratio for block in statistics
            },
            "tests": len(tests),
            "family_alpha": FAMILY_ALPHA,
        }
    )
    for test in tests:
        measurement.record(abs(test.statistic), critical)
    rejected = {test.block: test for test in holm_rejected(tests)}
    if rejected:
        types = layer_types(session, entry)
        wrong = [block for block in statistics if (block.layer, block.flavour) in rejected]
        found = "; ".join(
            f"layer {block.layer!r} ({types[block.layer]}, {block.flavour}) |t| = "
            f"{abs(block.t):.3g}, mean tr(EKFAC) / tr(GGN) = {block.mean_ratio:.4g}"
            for block in wrong
        )
        raise CheckFailed(
            f"the trace of MC EKFAC is biased (Holm, family-wise level {FAMILY_ALPHA:g} over "
            f"{len(tests)} t tests, {len(seeds)} seeds with mc_samples={UNBIASED_SAMPLES}): "
            f"{found}",
            observed=abs(wrong[0].t),
            tolerance=critical,
            diagnosis=_factor_diagnosis([block.mean_ratio for block in wrong]),
        )
    return measurement


# biased blocks whose mean ratios are this close share one constant factor
_COMMON_FACTOR_MARGIN = 0.1


def _factor_diagnosis(ratios: list[float]) -> str:
    if max(ratios) <= (1 + _COMMON_FACTOR_MARGIN) * min(ratios):
        return f"off by a constant factor x {sum(ratios) / len(ratios):.4g}?"
    return "off by different factors on different layers: " + ", ".join(
        f"x {ratio:.4g}" for ratio in ratios
    )


CHECKS = [
    Check(
        "ekfac/mc-trace-unbiased",
        "the trace of every layer's MC EKFAC block is on average the GGN's, whatever labels were drawn (t-tests, Holm-corrected across layers; false-positive rate in docs/statistics.md)",
        "the MC Fisher is unbiased and a trace does not depend on the basis",
        kind="statistical",
        measure=_mc_trace,
        cases=mc.statistical_cases,
        needs=NEEDS_EKFAC,
        profiles=frozenset({"default", "thorough"}),
    ),
]
