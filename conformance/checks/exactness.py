"""Exactness: where the theory says KFAC equals the exact curvature block, it must."""

from __future__ import annotations

from kfac_conformance.checks.base import CaseEntry, Check, FuzzProperty
from kfac_conformance.checks.drawn import exact_for, float64
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import Session, run_for_bias_modes, tolerance_for

_CURVATURE = {"type-2": ("ggn", "empirical"), "empirical": ("empirical", "ggn")}
_NAMES = {"ggn": "GGN", "empirical": "empirical Fisher"}


def _exactness_check(fisher_type: str, flavour: str) -> Check:
    curvature, other = _CURVATURE[fisher_type]

    def on_exact_layers(entry: CaseEntry) -> bool:
        return entry.case is not None and bool(entry.case.exact_layers(fisher_type, flavour))

    def measure(session: Session, entry: CaseEntry):
        layers = entry.case.exact_layers(fisher_type, flavour)
        exact = session.exact(entry, curvature)
        alternatives = {_NAMES[other]: session.exact(entry, other)}

        def body(bias, measurement):
            problem = session.fresh(entry)
            request = Request(fisher_type, flavour, bias=bias)
            result = session.call(problem, request)
            compare_diagnosed(
                problem,
                result,
                exact,
                layers,
                tolerance_for(problem),
                measurement,
                f"bias={bias}",
                alternatives,
                request,
            )

        return run_for_bias_modes(session, entry, fisher_type, flavour, body)

    return Check(
        id=f"exactness/{fisher_type}-{flavour}",
        statement=f"KFAC {fisher_type} ({flavour}) equals the exact {_NAMES[curvature]} block where the theory says it is exact",
        source="KFAC tutorial (arXiv 2507.05127); Eschenhagen et al. 2023 for shared axes",
        kind="exact",
        measure=measure,
        cases=on_exact_layers,
        fuzz=FuzzProperty(float64(exact_for(f"{fisher_type}/{flavour}")), order=0),
    )


CHECKS = [
    _exactness_check(fisher_type, flavour)
    for fisher_type in ("type-2", "empirical")
    for flavour in ("expand", "reduce")
]
