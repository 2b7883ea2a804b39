"""When a check runs as a fuzz property: conditions on a drawn (case, request).

A check's :class:`~kfac_conformance.checks.base.FuzzProperty` combines these; the drawn case
is a :class:`~kfac_conformance.fuzzing.problems.DrawnCase` (any
:class:`~kfac_conformance.cases.canonical.Case` will do).
"""

from __future__ import annotations

from collections.abc import Callable

from kfac_conformance.cases.canonical import Case
from kfac_conformance.contract.problem import Request

DrawnCondition = Callable[[Case, Request], bool]


def always(case: Case, request: Request) -> bool:
    return True


def drawn(fisher_type: str) -> DrawnCondition:
    """The drawn request asks for ``fisher_type``."""
    return lambda case, request: request.fisher_type == fisher_type


def exact_for(key: str) -> DrawnCondition:
    """The case's exactness map names layers for ``key`` (``"<fisher type>/<flavour>"``)."""
    return lambda case, request: bool(case.exact.get(key))


def several_data(case: Case, request: Request) -> bool:
    return case.num_data >= 2


def per_position(case: Case, request: Request) -> bool:
    return case.per_position


def float64(applies: DrawnCondition) -> DrawnCondition:
    """Numbers are compared on float64 problems only: a drawn float32 problem's conditioning is
    unknown, and the reference itself missed the 1e-4 float32 tolerance by 1.5-3.6x on drawn
    problems (cancellation in saturated loss Hessians and in gradients summed over positions).
    float32 problems still run the structure, side-effect and reproducibility properties."""
    return lambda case, request: (
        getattr(case, "dtype", "float64") == "float64" and applies(case, request)
    )
