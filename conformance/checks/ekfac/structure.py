"""EKFAC's structure: non-negative corrected eigenvalues and orthonormal bases."""

from __future__ import annotations

from kfac_conformance.checks.base import CaseEntry, Check, Measurement
from kfac_conformance.checks.ekfac.calls import EKFAC_FISHER_TYPES, NEEDS_EKFAC, Attempts
from kfac_conformance.checks.ekfac.factors import flat_eigenvalues, orthonormality_error
from kfac_conformance.execution.session import Session, tolerance_for
from kfac_ref.factors import groups_of


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
                measurement.hold(
                    max(-values.min().item(), 0.0) / (values.abs().max().item() or 1.0),
                    tolerance,
                    f"{where}: a corrected eigenvalue is negative (each is a sum of squares); "
                    "its size over the largest",
                )
                for group in groups_of(factors):
                    for name in ("QA", "QB"):
                        measurement.hold(
                            orthonormality_error(getattr(group, name)),
                            tolerance,
                            f"{where}: {name} is not orthonormal: ‖QᵀQ − I‖/√d",
                        )
    return attempts.outcome(measurement)


CHECKS = [
    Check(
        "ekfac/structure",
        "the corrected eigenvalues are non-negative and QA, QB orthonormal, for every fisher type claimed",
        "definition: each corrected eigenvalue is a sum of squares",
        kind="guard",
        measure=_structure,
        needs=NEEDS_EKFAC,
    ),
]
