"""Agreement with the reference: where KFAC is not exact, a candidate must equal ``kfac_ref``."""

from __future__ import annotations

from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckSkipped,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.checks.drawn import drawn, float64
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract.problem import FLAVOURS, Request
from kfac_conformance.execution.session import Session, dense_blocks, tolerance_for


def _not_exact(entry: CaseEntry) -> bool:
    return entry.case is None or not entry.case.exact


def _agreement_check(fisher_type: str) -> Check:
    def measure(session: Session, entry: CaseEntry):
        measurement, ran = Measurement(), False
        for flavour in FLAVOURS:
            for bias in session.supported_bias_modes(entry, fisher_type, flavour):
                request = Request(fisher_type, flavour, bias=bias)
                problem = session.fresh(entry)
                result = session.call(problem, request)
                reference = dense_blocks(session.reference(entry, request))
                compare_diagnosed(
                    problem,
                    result,
                    reference,
                    problem.layers,
                    tolerance_for(problem),
                    measurement,
                    f"kfac_approx={flavour}, bias={bias}",
                    request=request,
                )
                ran = True
        if not ran:
            raise CheckSkipped(f"not supported: fisher type {fisher_type!r}")
        return measurement

    return Check(
        id=f"agreement/{fisher_type}",
        statement=f"KFAC {fisher_type} equals kfac_ref's on problems where KFAC is not exact (differential test)",
        source="differential testing against the reference",
        kind="reference",
        measure=measure,
        cases=_not_exact,
        needs=Needs(fisher_types=frozenset({fisher_type})),
        # drawn problems are compared with kfac_ref exact or not: ``cases`` leaves the exact
        # canonical cases to the exactness checks, which is no condition of the property
        fuzz=FuzzProperty(float64(drawn(fisher_type)), order=1),
    )


CHECKS = [_agreement_check(fisher_type) for fisher_type in ("type-2", "empirical", "forward-only")]
