"""The corrected eigenvalues are exact: ``S = diag(QᵀFQ)`` in the candidate's own basis, for
every claimed fisher type, flavour and bias mode."""

from __future__ import annotations

import torch
from torch import Tensor

from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.checks.drawn import drawn, float64
from kfac_conformance.checks.ekfac.calls import EKFAC_FISHER_TYPES, FUZZ_ORDER, Attempts
from kfac_conformance.checks.ekfac.curvature import CURVATURE, NAMES, exact_curvature
from kfac_conformance.checks.ekfac.factors import corrected_eigenvalues, flat_eigenvalues
from kfac_conformance.comparison.blocks import fitted_factor, relative_error
from kfac_conformance.comparison.diagnosis import problem_counts, scale_failure
from kfac_conformance.execution.session import Session, tolerance_for
from kfac_ref.factors import EKFACFactors, GroupedFactors


def diagnose_correction(
    factors: EKFACFactors | GroupedFactors,
    expected: Tensor,
    tolerance: float,
    alternatives: dict[str, Tensor],
) -> str | None:
    """Name the likely mistake when ``S`` is not ``diag(Q^T F Q)`` (for a grouped
    convolution, only a constant factor or an alternative curvature: the layouts of ``S``
    are the groups')."""
    observed = flat_eigenvalues(factors)
    scale, residual = fitted_factor(observed, expected)
    if scale != 0 and residual <= tolerance:
        return f"off by a constant factor x {scale:.6g}: a reduction or convention factor?"
    if isinstance(factors, GroupedFactors):
        return _named_alternative(observed, alternatives, tolerance)
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
    return _named_alternative(observed, alternatives, tolerance)


def _named_alternative(
    observed: Tensor, alternatives: dict[str, Tensor], tolerance: float
) -> str | None:
    for name, other in alternatives.items():
        if relative_error(observed, other) <= tolerance:
            return f"S is diag(QᵀFQ) of the {name} instead"
    return None


def _correction_check(fisher_type: str) -> Check:
    curvature = CURVATURE[fisher_type]
    other = {"ggn": "empirical", "empirical": "ggn"}.get(curvature)

    def measure(session: Session, entry: CaseEntry):
        measurement, attempts, mc_fishers = Measurement(), Attempts(session, entry), []
        for request, problem, result in attempts.results(fisher_type):
            exact = exact_curvature(session, entry, request, problem, mc_fishers)
            tolerance = tolerance_for(problem)
            for layer in problem.layers:
                factors = result[layer]
                expected = corrected_eigenvalues(factors, exact[layer])
                error = relative_error(flat_eigenvalues(factors), expected)
                measurement.record(error, tolerance)
                if not error <= tolerance:
                    alternatives = (
                        {
                            NAMES[other]: corrected_eigenvalues(
                                factors, session.exact(entry, other)[layer]
                            )
                        }
                        if other
                        else {}
                    )
                    counts, shared = problem_counts(session.fresh(entry))
                    fitted = {
                        name: fitted_factor(
                            flat_eigenvalues(result[name]),
                            corrected_eigenvalues(result[name], exact[name]),
                        )
                        for name in problem.layers
                    }
                    raise CheckFailed(
                        f"layer {layer!r} ({request.describe()}): S differs from diag(QᵀFQ) of the "
                        f"exact {NAMES[curvature]} in the candidate's own basis, relative error "
                        f"{error:.3g} > tolerance {tolerance:.1g}",
                        observed=error,
                        tolerance=tolerance,
                        diagnosis=diagnose_correction(factors, expected, tolerance, alternatives),
                        scale=scale_failure(
                            session.fresh(entry), request, counts, shared, fitted, tolerance
                        ),
                    )
        return attempts.outcome(measurement, fisher_type)

    return Check(
        id=f"ekfac/correction-exact-{fisher_type}",
        statement=f"EKFAC {fisher_type}: S = diag(QᵀFQ) in the candidate's own basis, F the exact {NAMES[curvature]} (every flavour and bias mode claimed)",
        source="George et al. 2018 (EKFAC), eq. for the corrected eigenvalues; exact for any architecture",
        kind="exact",
        measure=measure,
        needs=Needs(fisher_types=frozenset({fisher_type}), approximations=frozenset({"ekfac"})),
        fuzz=None if fisher_type == "mc" else FuzzProperty(float64(drawn(fisher_type)), FUZZ_ORDER),
    )


CHECKS = [_correction_check(fisher_type) for fisher_type in EKFAC_FISHER_TYPES]
