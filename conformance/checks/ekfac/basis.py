"""The basis is KFAC's: ``QA`` and ``QB`` are orthonormal and diagonalise KFAC's ``A`` and ``B``
(the candidate's own KFAC where it claims it, else the reference's)."""

from __future__ import annotations

import dataclasses

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, FuzzProperty, Measurement
from kfac_conformance.checks.drawn import always, float64
from kfac_conformance.checks.ekfac.calls import (
    EKFAC_FISHER_TYPES,
    FUZZ_ORDER,
    NEEDS_EKFAC,
    Attempts,
)
from kfac_conformance.checks.ekfac.factors import off_diagonal, orthonormality_error
from kfac_conformance.contract.problem import FLAVOURS, Request
from kfac_conformance.execution.session import Session, tolerance_for
from kfac_ref.factors import EKFACFactors, KroneckerFactors, groups_of

SOURCE = (
    "George et al. 2018 (EKFAC); the correction is the Frobenius projection onto KFAC's eigenbasis"
)


def kfac_to_compare(session: Session, entry: CaseEntry, request: Request):
    """The candidate's own KFAC for the request where it claims it, else the reference's
    (``None`` for MC, whose reference draws other labels)."""
    kfac_request = dataclasses.replace(request, approximation="kfac")
    problem = session.fresh(entry)
    if session.candidate.capabilities.unsupported(problem, kfac_request) is None:
        return session.call(problem, kfac_request), "the candidate's own KFAC"
    if request.fisher_type == "mc":
        return None, None
    return session.reference(entry, kfac_request), "kfac_ref's KFAC"


def basis_mix_up(
    factors: EKFACFactors, kfac: KroneckerFactors, basis_name: str, tolerance: float
) -> str | None:
    """The usual mistake that explains a basis which does not diagonalise its KFAC factor:
    the bases of ``A`` and ``B`` exchanged, or eigenvectors read from the rows of ``eigh``'s
    matrix; ``None`` when neither does."""
    QA, QB = factors.QA, factors.QB
    if (
        QA.shape == kfac.B.shape
        and off_diagonal(QA, kfac.B) <= tolerance
        and off_diagonal(QB, kfac.A) <= tolerance
    ):
        return "QA and QB exchanged: QA diagonalises B and QB diagonalises A"
    basis, factor_name = (QA, "A") if basis_name == "QA" else (QB, "B")
    if off_diagonal(basis.T, getattr(kfac, factor_name)) <= tolerance:
        return (
            f"eigenvectors read from rows: {basis_name}ᵀ diagonalises {factor_name} "
            "(torch.linalg.eigh returns them as columns)"
        )
    return None


def _per_group(layers, ekfac, kfac):
    """``(layer, ", group g" or "", EKFAC, KFAC)`` for every layer, or every group of a
    grouped convolution."""
    for layer in layers:
        groups = list(zip(groups_of(ekfac[layer]), groups_of(kfac[layer]), strict=True))
        for g, (ekfac_group, kfac_group) in enumerate(groups):
            yield layer, f", group {g}" if len(groups) > 1 else "", ekfac_group, kfac_group


def _eigenbasis(session: Session, entry: CaseEntry):
    measurement, attempts = Measurement(), Attempts(session, entry)
    # the reference's MC KFAC draws other labels: MC only against the candidate's own KFAC
    with_mc = any(session.supported_bias_modes(entry, "mc", flavour) for flavour in FLAVOURS)
    for fisher_type in EKFAC_FISHER_TYPES if with_mc else ("type-2", "empirical"):
        # the bias layouts are the same for every fisher type: all of them for type-2 only
        first_bias_only = fisher_type != "type-2"
        for request, problem, result in attempts.results(fisher_type, first_bias_only):
            kfac, whose = kfac_to_compare(session, entry, request)
            if kfac is None:
                continue
            tolerance = tolerance_for(problem)
            for layer, group, ekfac_group, kfac_group in _per_group(problem.layers, result, kfac):
                where = f"layer {layer!r}{group} ({request.describe()})"
                for basis_name, factor_name in (("QA", "A"), ("QB", "B")):
                    basis = getattr(ekfac_group, basis_name)
                    measurement.hold(
                        orthonormality_error(basis),
                        tolerance,
                        f"{where}: {basis_name} is not orthonormal: ‖QᵀQ − I‖/√d",
                    )
                    try:
                        measurement.hold(
                            off_diagonal(basis, getattr(kfac_group, factor_name)),
                            tolerance,
                            f"{where}: {basis_name} does not diagonalise {whose} {factor_name}: "
                            f"‖offdiag(Qᵀ{factor_name}Q)‖/‖{factor_name}‖",
                        )
                    except CheckFailed as failed:
                        failed.diagnosis = basis_mix_up(
                            ekfac_group, kfac_group, basis_name, tolerance
                        )
                        raise
    return attempts.outcome(measurement)


CHECKS = [
    Check(
        "ekfac/kfac-eigenbasis",
        "QA and QB are orthonormal and diagonalise KFAC's A and B (the candidate's own KFAC where it claims it, else kfac_ref's); signs and order within degenerate eigenspaces are free",
        SOURCE,
        kind="reference",
        measure=_eigenbasis,
        needs=NEEDS_EKFAC,
        verdict_scale="relative",  # an eigenbasis does not depend on the scale
        fuzz=FuzzProperty(float64(always), FUZZ_ORDER),
    ),
]
