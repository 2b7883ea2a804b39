"""MC EKFAC's trace is unbiased: a t-test over seeds that needs no access to the drawn labels."""

from __future__ import annotations

import torch

from kfac_conformance.checks import mc
from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.checks.ekfac.calls import NEEDS_EKFAC, unclaimed_reason
from kfac_conformance.checks.ekfac.factors import flat_eigenvalues
from kfac_conformance.checks.mc import T_CRITICAL, UNBIASED_SAMPLES, t_statistic
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import Session


def mc_trace_t(session: Session, entry: CaseEntry, seeds: range) -> tuple[float, float]:
    r"""The t statistic of :math:`z_k = \mathrm{tr}(\mathrm{EKFAC}_k) / \mathrm{tr}(G) - 1` over
    ``seeds`` (MC EKFAC with ``UNBIASED_SAMPLES`` labels per datum, ``G`` the exact GGN, traces
    summed over the layers) and the mean ratio :math:`1 + \bar z`.

    :math:`\mathrm{tr}(\mathrm{EKFAC}) = \sum S = \mathrm{tr}(Q^\top F Q) = \mathrm{tr}(F)`
    for any orthonormal basis, so the estimate does not depend on the sampled basis, and
    :math:`E[\mathrm{tr}\,F_{MC}] = \mathrm{tr}(G)` because the MC Fisher is unbiased: a
    candidate that hides its labels is still held to its scale and normalisation.
    """
    modes = session.supported_bias_modes(entry, "mc", "expand", "ekfac")
    if not modes:
        raise CheckSkipped(unclaimed_reason(session, entry, "mc"))
    ggn = session.exact(entry, "ggn")
    target = sum(torch.trace(block.double().cpu()).item() for block in ggn.values())
    ratios = []
    for seed in seeds:
        request = Request("mc", "expand", UNBIASED_SAMPLES, seed, modes[0], "ekfac")
        problem = session.fresh(entry)
        result = session.call(problem, request)
        ratios.append(sum(flat_eigenvalues(result[layer]).sum().item() for layer in problem.layers))
    z = torch.tensor(ratios, dtype=torch.float64) / target - 1
    return t_statistic(z, 1.0), 1 + z.mean().item()


def _mc_trace(session: Session, entry: CaseEntry):
    seeds = range(session.profile.mc_seeds)
    t, ratio = mc_trace_t(session, entry, seeds)
    measurement = Measurement(details={"mean_trace_ratio": ratio})
    measurement.record(abs(t), T_CRITICAL)
    if not abs(t) <= T_CRITICAL:
        raise CheckFailed(
            f"the trace of MC EKFAC is biased: |t| = {abs(t):.3g} > {T_CRITICAL} over {len(seeds)} "
            f"seeds with mc_samples={UNBIASED_SAMPLES}; mean tr(EKFAC) / tr(GGN) = {ratio:.4g}",
            observed=abs(t),
            tolerance=T_CRITICAL,
            diagnosis=f"off by a constant factor x {ratio:.4g}?",
        )
    return measurement


CHECKS = [
    Check(
        "ekfac/mc-trace-unbiased",
        "the trace of MC EKFAC is on average the GGN's, whatever labels were drawn (t-test, |t| > 8; false-positive rate in docs/statistics.md)",
        "the MC Fisher is unbiased and a trace does not depend on the basis",
        kind="statistical",
        measure=_mc_trace,
        cases=mc.statistical_cases,
        needs=NEEDS_EKFAC,
        profiles=frozenset({"default", "thorough"}),
    ),
]
