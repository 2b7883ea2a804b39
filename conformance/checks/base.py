"""What a check is, what it returns, and the context it runs in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from kfac_conformance.cases.canonical import Case
from kfac_conformance.contract.outcomes import STATUSES, CheckFailed, CheckSkipped
from kfac_conformance.contract.problem import Problem


@dataclass
class Measurement:
    """The worst observed error of a passing check and the tolerance it was held to."""

    observed: float | None = None
    tolerance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def record(self, observed: float, tolerance: float) -> None:
        if self.observed is None or observed / tolerance > self.observed / self.tolerance:
            self.observed, self.tolerance = observed, tolerance


@dataclass(frozen=True)
class CaseEntry:
    """A problem source: a canonical case (with exactness facts) or a user's factory."""

    id: str
    make_problem: Callable[[], Problem]
    case: Case | None = None
    builtin: bool = False  # a purpose-built problem that only its own check runs on
    # loaders of the oracle's blocks computed ahead (the stored fixtures), by curvature
    stored_exact: Mapping[str, Callable[[], Mapping[str, Tensor]]] = field(
        default_factory=dict, compare=False
    )


@dataclass(frozen=True)
class Check:
    """One property: its stable id, statement, source, where it applies, and how to test it."""

    id: str
    statement: str
    source: str
    applies_to: Callable[[CaseEntry], bool]
    run: Callable[[Any, CaseEntry], Measurement | None]
    profiles: frozenset[str] = frozenset({"quick", "default", "thorough"})
    on_builtin: bool = False

    @property
    def family(self) -> str:
        return self.id.split("/", 1)[0]


CheckRegistry = Mapping[str, Check]

__all__ = [
    "STATUSES",
    "CaseEntry",
    "Check",
    "CheckFailed",
    "CheckSkipped",
    "CheckRegistry",
    "Measurement",
]
