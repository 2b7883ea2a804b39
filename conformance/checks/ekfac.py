r"""EKFAC (George et al. 2018): the eigenvalue correction is exact on every problem.

A candidate's EKFAC is :math:`Q\,\mathrm{diag}(S)\,Q^\top` with :math:`Q = Q_B\otimes Q_A`
(:class:`kfac_ref.factors.EKFACFactors`). Whatever the architecture, the corrected
eigenvalues are the diagonal of the exact curvature block in that basis,

.. math::  \mathrm{vec}(S) = \mathrm{diag}(Q^\top F Q),

where ``F`` is the block the per-datum vectors span: the GGN for ``"type-2"``, the empirical
Fisher for ``"empirical"``, and for ``"mc"`` the MC Fisher of the labels the candidate drew
(which it exposes by the optional method ``sampled_labels(problem, request)``, one
``(mc_samples, *y.shape)`` tensor per batch; a candidate without it is skipped there, and
only the statistical ``ekfac/mc-trace-unbiased`` holds its MC EKFAC to scale). The
checks hold the candidate to this in its *own* basis, so eigenvector signs and the order
within degenerate eigenspaces are free; that the basis is KFAC's is checked on its own, by
:math:`Q_A^\top A Q_A` and :math:`Q_B^\top B Q_B` being diagonal for the candidate's own KFAC
factors where it claims KFAC, else the reference's (the projector onto each eigenspace is
what is identifiable, and a diagonal :math:`Q^\top K Q` says exactly that ``Q`` spans them).
Together they make EKFAC the Frobenius-nearest matrix to ``F`` that is diagonal in KFAC's
basis, hence :math:`\|F - \mathrm{EKFAC}\|_F \le \|F - \mathrm{KFAC}\|_F`, and equal to KFAC
(and ``F``) where KFAC is exact. ``"forward-only"`` has no loss curvature and no EKFAC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kfac_conformance.checks import invariance, mc
from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.checks.mc import T_CRITICAL, UNBIASED_SAMPLES, t_statistic
from kfac_conformance.comparison.blocks import kfac_pattern, name_factor, relative_error, restrict
from kfac_conformance.comparison.diagnosis import compare_diagnosed, problem_counts
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import BIAS_MODES, FLAVOURS, Problem, Request
from kfac_conformance.execution.session import Session, tolerance_for
from kfac_conformance.oracle import blocks as oracle
from kfac_ref.factors import EKFACFactors, joint_order

EKFAC_FISHER_TYPES = ("type-2", "empirical", "mc")
_CURVATURE = {"type-2": "ggn", "empirical": "empirical", "mc": "mc"}
_NAMES = {"ggn": "GGN", "empirical": "empirical Fisher", "mc": "MC Fisher of the drawn labels"}
MC_SAMPLES = 2
MC_SEED = 3


def corrected_eigenvalues(factors: EKFACFactors, block: Tensor) -> Tensor:
    r"""``diag(Q^T F Q)`` in float64 for the candidate's basis, laid out like ``S`` (followed by
    :math:`\mathrm{diag}(Q_B^\top F_b Q_B)` for a separate bias), flattened.

    ``block`` is over ``[weight.flatten(), bias]``; a joint bias is first reordered into the
    row-major ``[W | b]`` the basis acts on. The diagonal is the column sums of
    :math:`Q\odot(FQ)`.
    """
    QA, QB = factors.QA.detach().double().cpu(), factors.QB.detach().double().cpu()
    F = block.detach().double().cpu()
    if factors.bias == "joint":
        row_major = torch.argsort(joint_order(QB.shape[0], QA.shape[0]))
        F = F[row_major][:, row_major]
    Q = torch.kron(QB, QA)
    weight = Q.shape[0]
    parts = [(Q * (F[:weight, :weight] @ Q)).sum(dim=0)]
    if factors.bias == "separate":
        parts.append((QB * (F[weight:, weight:] @ QB)).sum(dim=0))
    return torch.cat(parts)


def flat_eigenvalues(factors: EKFACFactors) -> Tensor:
    """The candidate's ``S`` (and ``S_bias``) flattened, in float64, to compare with
    :func:`corrected_eigenvalues`."""
    parts = [factors.S.flatten()]
    if factors.S_bias is not None:
        parts.append(factors.S_bias)
    return torch.cat([part.detach().double().cpu() for part in parts])


def hold(measurement: Measurement, value: float, tolerance: float, message: str) -> None:
    """Record ``value`` and fail with ``message`` unless it is within ``tolerance``."""
    measurement.record(value, tolerance)
    if not value <= tolerance:
        raise CheckFailed(
            f"{message} = {value:.3g} > tolerance {tolerance:.1g}",
            observed=value,
            tolerance=tolerance,
        )


def claimed_requests(
    session: Session,
    entry: CaseEntry,
    fisher_type: str,
    first_bias_only: bool = False,
    flavours: Sequence[str] = FLAVOURS,
) -> Iterator[Request]:
    """Every claimed EKFAC request of ``fisher_type`` (each flavour, each bias mode or the first)."""
    for flavour in flavours:
        modes = session.supported_bias_modes(entry, fisher_type, flavour, "ekfac")
        for bias in modes[:1] if first_bias_only else modes:
            yield Request(
                fisher_type,
                flavour,
                mc_samples=MC_SAMPLES,
                seed=MC_SEED,
                bias=bias,
                approximation="ekfac",
            )


def unclaimed_reason(session: Session, entry: CaseEntry, fisher_type: str) -> str:
    """Why no EKFAC request of ``fisher_type`` is claimed (a reason beyond the bias mode first)."""
    problem = session.fresh(entry)
    reasons = [
        session.candidate.capabilities.unsupported(
            problem, Request(fisher_type, flavour, bias=bias, approximation="ekfac")
        )
        for flavour in FLAVOURS
        for bias in BIAS_MODES
    ]
    reasons = [reason for reason in reasons if reason]
    beyond_bias = [reason for reason in reasons if not reason.startswith("not supported: bias")]
    return (beyond_bias or reasons or [f"not supported: EKFAC {fisher_type}"])[0]


@dataclass
class Attempts:
    """The claimed EKFAC calls of one check. A refusal by the candidate skips that request
    only; the check is skipped (with the first reason) when no request ran at all."""

    session: Session
    entry: CaseEntry
    refusals: list[str] = field(default_factory=list)
    ran: bool = False

    def results(
        self, fisher_type: str, first_bias_only: bool = False, flavours: Sequence[str] = FLAVOURS
    ) -> Iterator[tuple[Request, Problem, dict[str, EKFACFactors]]]:
        requests = claimed_requests(
            self.session, self.entry, fisher_type, first_bias_only, flavours
        )
        for request in requests:
            problem = self.session.fresh(self.entry)
            try:
                result = self.session.call(problem, request)
            except CandidateRefused as refusal:
                self.refusals.append(str(refusal))
                continue
            self.ran = True
            yield request, problem, result

    def outcome(self, measurement: Measurement, fisher_type: str = "type-2") -> Measurement:
        if self.ran:
            return measurement
        if self.refusals:
            raise CheckSkipped(self.refusals[0])
        raise CheckSkipped(unclaimed_reason(self.session, self.entry, fisher_type))


def exact_curvature(
    session: Session,
    entry: CaseEntry,
    request: Request,
    problem: Problem,
    drawn: list[tuple[list[Tensor], dict[str, Tensor]]] | None = None,
) -> dict[str, Tensor]:
    """``F`` for ``request``: the stored or cached GGN / empirical Fisher, or the MC Fisher of the
    labels the candidate says it drew for ``problem``. ``drawn`` caches MC Fishers by their
    labels across the requests of one check (flavours and bias modes draw the same labels)."""
    curvature = _CURVATURE[request.fisher_type]
    if curvature != "mc":
        return session.exact(entry, curvature)
    labels_of = getattr(session.candidate, "sampled_labels", None)
    if labels_of is None:
        raise CheckSkipped(
            "not supported: the candidate does not expose the labels its MC Fisher drew "
            "(optional method sampled_labels(problem, request))"
        )
    labels = [
        label.detach().cpu().double() if label.is_floating_point() else label.detach().cpu()
        for label in labels_of(problem, request)
    ]
    for seen, blocks in drawn or []:
        if len(seen) == len(labels) and all(map(torch.equal, seen, labels)):
            return blocks
    exact_problem = entry.make_problem().to(device="cpu", dtype=torch.float64)
    blocks = oracle.exact_blocks(
        exact_problem.model,
        exact_problem.loss_func,
        exact_problem.batches,
        exact_problem.layers,
        "mc",
        sampled_labels=labels,
    )
    if drawn is not None:
        drawn.append((labels, blocks))
    return blocks


def diagnose_correction(
    factors: EKFACFactors,
    expected: Tensor,
    tolerance: float,
    alternatives: dict[str, Tensor],
    quantities: dict[str, float],
) -> str | None:
    """Name the likely mistake when ``S`` is not ``diag(Q^T F Q)``."""
    observed = flat_eigenvalues(factors)
    scale = (observed @ expected) / (expected @ expected).clamp_min(1e-300)
    if scale.abs() > 0 and relative_error(observed / scale, expected) <= tolerance:
        named = name_factor(scale.item(), quantities)
        explanation = f" = {named}" if named else ""
        return f"off by a constant factor x {scale.item():.6g}{explanation}: a reduction or convention factor?"
    S = factors.S.detach().double().cpu()
    weight = S.numel()
    # the (dim A, dim B) matrix of the right values, its buffer read as (dim B, dim A)
    laid_out_transposed = expected[:weight].reshape(S.shape).T.reshape(S.shape)
    if relative_error(S, laid_out_transposed) <= tolerance:
        return (
            "S is transposed: it matches diag(QᵀFQ) laid out (dim A, dim B); "
            "S[i, j] must belong to QB's column i and QA's column j"
        )
    singular = torch.linalg.svdvals(S)
    expected_singular = torch.linalg.svdvals(expected[:weight].reshape(S.shape))
    if (
        len(singular) > 1
        and singular[1] <= tolerance * singular[0]
        and expected_singular[1] > 10 * tolerance * expected_singular[0]
    ):
        return "S is an outer product of two vectors (KFAC's eigenvalues λ_B λ_Aᵀ, uncorrected?)"
    for name, other in alternatives.items():
        if relative_error(observed, other) <= tolerance:
            return f"S is diag(QᵀFQ) of the {name} instead"
    return None


def _correction_check(fisher_type: str) -> Check:
    curvature = _CURVATURE[fisher_type]
    other = {"ggn": "empirical", "empirical": "ggn"}.get(curvature)

    def run(session: Session, entry: CaseEntry):
        measurement, attempts, drawn = Measurement(), Attempts(session, entry), []
        for request, problem, result in attempts.results(fisher_type):
            exact = exact_curvature(session, entry, request, problem, drawn)
            tolerance = tolerance_for(problem)
            for layer in problem.layers:
                factors = result[layer]
                expected = corrected_eigenvalues(factors, exact[layer])
                error = relative_error(flat_eigenvalues(factors), expected)
                measurement.record(error, tolerance)
                if not error <= tolerance:
                    alternatives = (
                        {
                            _NAMES[other]: corrected_eigenvalues(
                                factors, session.exact(entry, other)[layer]
                            )
                        }
                        if other
                        else {}
                    )
                    counts, shared = problem_counts(session.fresh(entry))
                    raise CheckFailed(
                        f"layer {layer!r} ({request.describe()}): S differs from diag(QᵀFQ) of the "
                        f"exact {_NAMES[curvature]} in the candidate's own basis, relative error "
                        f"{error:.3g} > tolerance {tolerance:.1g}",
                        observed=error,
                        tolerance=tolerance,
                        diagnosis=diagnose_correction(
                            factors,
                            expected,
                            tolerance,
                            alternatives,
                            {**counts, "S": shared.get(layer, 1)},
                        ),
                    )
        return attempts.outcome(measurement, fisher_type)

    return Check(
        id=f"ekfac/correction-exact-{fisher_type}",
        statement=f"EKFAC {fisher_type}: S = diag(QᵀFQ) in the candidate's own basis, F the exact {_NAMES[curvature]} (every flavour and bias mode claimed)",
        source="George et al. 2018 (EKFAC), eq. for the corrected eigenvalues; exact for any architecture",
        applies_to=lambda entry: True,
        run=run,
    )


def _kfac_to_compare(session: Session, entry: CaseEntry, request: Request):
    """The candidate's own KFAC for the request where it claims it, else the reference's
    (``None`` for MC, whose reference draws other labels)."""
    kfac_request = dataclasses.replace(request, approximation="kfac")
    problem = session.fresh(entry)
    if session.candidate.capabilities.unsupported(problem, kfac_request) is None:
        return session.call(problem, kfac_request), "the candidate's own KFAC"
    if request.fisher_type == "mc":
        return None, None
    return session.reference(entry, kfac_request), "kfac_ref's KFAC"


def orthonormality_error(basis: Tensor) -> float:
    r""":math:`\|Q^\top Q - I\|_F / \sqrt d` in float64."""
    Q = basis.detach().double().cpu()
    identity = torch.eye(Q.shape[0], dtype=Q.dtype)
    return ((Q.T @ Q - identity).norm() / Q.shape[0] ** 0.5).item()


def off_diagonal(basis: Tensor, factor: Tensor) -> float:
    r""":math:`\|\mathrm{offdiag}(Q^\top K Q)\|_F / \|K\|_F` in float64: zero exactly when the
    columns of ``Q`` span ``K``'s eigenspaces, whatever their signs and order."""
    Q, K = basis.detach().double().cpu(), factor.detach().double().cpu()
    rotated = Q.T @ K @ Q
    leak = (rotated - torch.diag(torch.diagonal(rotated))).norm() / K.norm().clamp_min(1e-300)
    return leak.item()


def _eigenbasis(session: Session, entry: CaseEntry):
    _claims_ekfac(session)
    measurement, attempts = Measurement(), Attempts(session, entry)
    # the reference's MC KFAC draws other labels: MC only against the candidate's own KFAC
    with_mc = any(session.supported_bias_modes(entry, "mc", flavour) for flavour in FLAVOURS)
    for fisher_type in EKFAC_FISHER_TYPES if with_mc else ("type-2", "empirical"):
        # the bias layouts are the same for every fisher type: all of them for type-2 only
        first_bias_only = fisher_type != "type-2"
        for request, problem, result in attempts.results(fisher_type, first_bias_only):
            kfac, whose = _kfac_to_compare(session, entry, request)
            if kfac is None:
                continue
            tolerance = tolerance_for(problem)
            for layer in problem.layers:
                where = f"layer {layer!r} ({request.describe()})"
                for basis_name, factor_name in (("QA", "A"), ("QB", "B")):
                    basis = getattr(result[layer], basis_name)
                    hold(
                        measurement,
                        orthonormality_error(basis),
                        tolerance,
                        f"{where}: {basis_name} is not orthonormal: ‖QᵀQ − I‖/√d",
                    )
                    hold(
                        measurement,
                        off_diagonal(basis, getattr(kfac[layer], factor_name)),
                        tolerance,
                        f"{where}: {basis_name} does not diagonalise {whose} {factor_name}: "
                        f"‖offdiag(Qᵀ{factor_name}Q)‖/‖{factor_name}‖",
                    )
    return attempts.outcome(measurement)


def _frobenius_optimal(session: Session, entry: CaseEntry):
    measurement, attempts = Measurement(), Attempts(session, entry)
    for fisher_type in ("type-2", "empirical"):
        for request, problem, ekfac in attempts.results(fisher_type, first_bias_only=True):
            kfac, whose = _kfac_to_compare(session, entry, request)
            exact = exact_curvature(session, entry, request, problem)
            tolerance = tolerance_for(problem)
            for layer in problem.layers:
                F = restrict(exact[layer].double().cpu(), kfac_pattern(ekfac[layer]))
                to_ekfac = (F - ekfac[layer].to_dense().double().cpu()).norm().item()
                to_kfac = (F - kfac[layer].to_dense().double().cpu()).norm().item()
                hold(
                    measurement,
                    max(to_ekfac - to_kfac, 0.0) / (F.norm().item() or 1.0),
                    tolerance,
                    f"layer {layer!r} ({request.describe()}): ‖F − EKFAC‖ = {to_ekfac:.6g} exceeds "
                    f"‖F − KFAC‖ = {to_kfac:.6g} ({whose}), F the exact "
                    f"{_NAMES[_CURVATURE[fisher_type]]}; the excess over ‖F‖",
                )
    return attempts.outcome(measurement)


def _exact_pairs(entry: CaseEntry) -> list[tuple[str, str]]:
    if entry.case is None:
        return []
    return [
        (fisher_type, flavour)
        for fisher_type in ("type-2", "empirical")
        for flavour in FLAVOURS
        if entry.case.exact_layers(fisher_type, flavour)
    ]


def _equals_exact(session: Session, entry: CaseEntry):
    measurement, attempts = Measurement(), Attempts(session, entry)
    for fisher_type, flavour in _exact_pairs(entry):
        layers = entry.case.exact_layers(fisher_type, flavour)
        exact = session.exact(entry, _CURVATURE[fisher_type])
        for request, problem, result in attempts.results(fisher_type, flavours=(flavour,)):
            compare_diagnosed(
                problem,
                result,
                exact,
                layers,
                tolerance_for(problem),
                measurement,
                f"EKFAC {request.describe()}",
            )
    return attempts.outcome(measurement)


def _structure(session: Session, entry: CaseEntry):
    measurement, attempts = Measurement(), Attempts(session, entry)
    for fisher_type in EKFAC_FISHER_TYPES:
        for request, problem, result in attempts.results(
            fisher_type, first_bias_only=True, flavours=("expand",)
        ):
            tolerance = tolerance_for(problem)
            for layer, factors in result.items():
                values = flat_eigenvalues(factors)
                where = f"layer {layer!r} ({request.describe()})"
                hold(
                    measurement,
                    max(-values.min().item(), 0.0) / (values.abs().max().item() or 1.0),
                    tolerance,
                    f"{where}: a corrected eigenvalue is negative (each is a sum of squares); "
                    "its size over the largest",
                )
                for name in ("QA", "QB"):
                    hold(
                        measurement,
                        orthonormality_error(getattr(factors, name)),
                        tolerance,
                        f"{where}: {name} is not orthonormal: ‖QᵀQ − I‖/√d",
                    )
    return attempts.outcome(measurement)


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
    _claims_ekfac(session)
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


def _claims_ekfac(session: Session) -> None:
    if "ekfac" not in session.candidate.capabilities.approximations:
        raise CheckSkipped("not supported: approximations ['ekfac']")


def _mean_vs_sum(session: Session, entry: CaseEntry):
    _claims_ekfac(session)
    return invariance.mean_vs_sum(session, entry, approximation="ekfac")


def _batch_splitting(session: Session, entry: CaseEntry):
    _claims_ekfac(session)
    return invariance.batch_splitting(session, entry, approximation="ekfac")


SOURCE = (
    "George et al. 2018 (EKFAC); the correction is the Frobenius projection onto KFAC's eigenbasis"
)
CHECKS = [
    *(_correction_check(fisher_type) for fisher_type in EKFAC_FISHER_TYPES),
    Check(
        "ekfac/mc-trace-unbiased",
        "the trace of MC EKFAC is on average the GGN's, whatever labels were drawn (t-test, |t| > 8; false-positive rate in docs/statistics.md)",
        "the MC Fisher is unbiased and a trace does not depend on the basis",
        mc.applies_statistically,
        _mc_trace,
        profiles=frozenset({"default", "thorough"}),
    ),
    Check(
        "ekfac/kfac-eigenbasis",
        "QA and QB are orthonormal and diagonalise KFAC's A and B (the candidate's own KFAC where it claims it, else kfac_ref's); signs and order within degenerate eigenspaces are free",
        SOURCE,
        lambda entry: True,
        _eigenbasis,
    ),
    Check(
        "ekfac/frobenius-optimal",
        "‖F − EKFAC‖_F ≤ ‖F − KFAC‖_F for the exact GGN and empirical Fisher F",
        SOURCE,
        lambda entry: True,
        _frobenius_optimal,
    ),
    Check(
        "ekfac/equals-exact-where-kfac-is",
        "EKFAC equals the exact block (and so KFAC) on the layers where KFAC is exact",
        "KFAC tutorial (arXiv 2507.05127) and Eschenhagen et al. 2023 exactness, with George et al. 2018",
        lambda entry: bool(_exact_pairs(entry)),
        _equals_exact,
    ),
    Check(
        "ekfac/structure",
        "the corrected eigenvalues are non-negative and QA, QB orthonormal, for every fisher type claimed",
        "definition: each corrected eigenvalue is a sum of squares",
        lambda entry: True,
        _structure,
    ),
    Check(
        "ekfac/mean-vs-sum",
        "EKFAC with reduction='mean' is R times EKFAC with reduction='sum'",
        "definition of the reduction factor R (KFAC tutorial)",
        lambda entry: True,
        _mean_vs_sum,
    ),
    Check(
        "ekfac/batch-splitting",
        "the same data as one batch or as several batches give the same EKFAC",
        invariance.SOURCE,
        invariance.several_data,
        _batch_splitting,
    ),
]
