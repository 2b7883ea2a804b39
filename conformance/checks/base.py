"""What a check is, what it returns, and the context it runs in.

A :class:`Check` carries everything that decides where it runs: the claims it needs up front
(:class:`Needs`), the case entries it selects (``cases``) or owns (``own_cases``), its
profiles, whether and where it is a fuzz property (:class:`FuzzProperty`), and the kind of
comparison it makes (:data:`Kind`). The plan and the fuzzer read these fields and nothing
else, so adding a check means writing it in its family's module and listing the family in
:mod:`kfac_conformance.checks.catalogue`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from torch import Tensor

from kfac_conformance.cases.architectures import tied_layers
from kfac_conformance.cases.canonical import Case
from kfac_conformance.comparison.scale_records import VERDICT_SCALES
from kfac_conformance.contract.outcomes import STATUSES, CheckFailed, CheckSkipped
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.profiles import GENERAL_PROFILES, PROFILES

if TYPE_CHECKING:
    from kfac_conformance.execution.session import Session

# What a check compares the candidate's answer with:
# - "exact": the exact curvature (the oracle's block, or what it implies, e.g. EKFAC's S);
# - "reference": kfac_ref's answer (differential testing);
# - "statistical": a hypothesis test over seeds, with a stated false-positive rate;
# - "invariance": the candidate's own answer to a transformed or repeated problem;
# - "guard": no second answer: a condition on what the candidate does or returns (it raises
#   outside its claim, leaves state alone, returns well-formed factors).
Kind = Literal["exact", "reference", "statistical", "invariance", "guard"]
KINDS: tuple[str, ...] = get_args(Kind)
# how a skip names the claim Capabilities.distributed
DISTRIBUTED_CLAIM = "distributed (computing inside a torch.distributed process group)"


@dataclass
class Measurement:
    """The worst observed error of a passing check and the tolerance it was held to."""

    observed: float | None = None
    tolerance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def record(self, observed: float, tolerance: float) -> None:
        if self.observed is None or observed / tolerance > self.observed / self.tolerance:
            self.observed, self.tolerance = observed, tolerance

    def hold(self, observed: float, tolerance: float, message: str) -> None:
        """Record ``observed`` and fail with ``message`` unless it is within ``tolerance``."""
        self.record(observed, tolerance)
        if not observed <= tolerance:
            raise CheckFailed(
                f"{message} = {observed:.3g} > tolerance {tolerance:.1g}",
                observed=observed,
                tolerance=tolerance,
            )


@dataclass(frozen=True)
class CaseEntry:
    """A problem source: a canonical case (with exactness facts), a user's factory, or a
    purpose-built problem that a check owns (``Check.own_cases``)."""

    id: str
    make_problem: Callable[[], Problem]
    case: Case | None = None
    # loaders of the oracle's blocks computed ahead (the stored fixtures), by curvature
    stored_exact: Mapping[str, Callable[[], Mapping[str, Tensor]]] = field(
        default_factory=dict, compare=False
    )
    # a drawn example (a ``kfac-conformance fuzz`` case file): the request it was drawn with;
    # the plan then runs on it the fuzz properties that ran on it when it was drawn
    drawn_request: Request | None = None


def every_case(entry: CaseEntry) -> bool:
    return True


@dataclass(frozen=True)
class Needs:
    """Claims a check needs whatever the problem; without them it is skipped before it runs,
    and the skip names them before any claim of the problem (its layer types, loss, ...).

    Only what is decided up front belongs here: what depends on the problem (its layer
    types, loss, bias) is decided by the check's own calls, against the candidate's
    ``Capabilities.unsupported``.
    """

    fisher_types: frozenset[str] = frozenset()
    approximations: frozenset[str] = frozenset()
    distributed: bool = False

    def unmet(self, capabilities: Capabilities) -> str | None:
        """Why ``capabilities`` lack what is needed (the skip message), or ``None``."""
        # worded as Capabilities.unsupported words them, so that a run's skips group by claim
        if self.distributed and not capabilities.distributed:
            return f"not supported: {DISTRIBUTED_CLAIM}"
        missing_approximations = sorted(self.approximations - capabilities.approximations)
        if missing_approximations:
            return f"not supported: approximations {missing_approximations}"
        missing_fisher_types = sorted(self.fisher_types - capabilities.fisher_types)
        if missing_fisher_types:
            return f"not supported: fisher types {missing_fisher_types}"
        return None


@dataclass(frozen=True)
class FuzzProperty:
    """A check run by the fuzzer on drawn problems (:mod:`kfac_conformance.fuzzing`).

    ``applies`` says on which drawn (case, request) it runs; see
    :mod:`kfac_conformance.checks.drawn` for the usual conditions. The fuzzer runs the
    properties of one example by ascending ``order`` (catalogue order among equals), and
    stops at the first failure: cheap and telling properties get low orders, statistical
    ones the highest.

    ``weight_tying`` properties run on the drawn problems with a module applied twice, and
    only there: KFAC assumes each layer is used once, so on those problems the only property
    is to raise or be exact (``kfac_ref`` raises), and no other property applies.
    """

    applies: Callable[[Case, Request], bool]
    order: int
    weight_tying: bool = False

    def runs_on(self, case: Case, request: Request) -> bool:
        """Whether the property runs on the drawn ``case`` and ``request``."""
        tied = bool(tied_layers(case.architecture))
        return tied == self.weight_tying and self.applies(case, request)


@dataclass(frozen=True)
class Check:
    """One property: its stable id, statement, source, where it runs, and how to test it.

    ``measure(session, entry)`` tests it on one case entry: it returns a
    :class:`Measurement` (or ``None``) when it holds, and raises :class:`CheckFailed` or
    :class:`CheckSkipped` otherwise. It runs on the entries ``cases`` selects, or, when
    ``own_cases`` is given, on those purpose-built entries only.
    """

    id: str
    statement: str
    source: str
    kind: Kind
    measure: Callable[[Session, CaseEntry], Measurement | None]
    cases: Callable[[CaseEntry], bool] = every_case
    own_cases: tuple[CaseEntry, ...] = ()
    needs: Needs = Needs()
    profiles: frozenset[str] = GENERAL_PROFILES
    fuzz: FuzzProperty | None = None
    # how the verdict depends on the scale of the answers where the kind says otherwise (see
    # kfac_conformance.comparison.scale_records.VERDICT_SCALES); None: as the kind says
    verdict_scale: str | None = None

    def __post_init__(self) -> None:
        family, _, name = self.id.partition("/")
        if not family or not name:
            raise ValueError(f"check id {self.id!r} must be 'family/name'")
        if self.kind not in KINDS:
            raise ValueError(f"check {self.id}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.verdict_scale not in (None, *VERDICT_SCALES):
            raise ValueError(
                f"check {self.id}: verdict_scale must be one of {VERDICT_SCALES} or None, "
                f"got {self.verdict_scale!r}"
            )
        unknown = sorted(self.profiles - set(PROFILES))
        if unknown:
            raise ValueError(
                f"check {self.id}: unknown profiles {unknown}; known: {list(PROFILES)}"
            )

    @property
    def family(self) -> str:
        return self.id.split("/", 1)[0]

    def run(self, session: Session, entry: CaseEntry) -> Measurement | None:
        """Skip when the candidate lacks what the check needs, else ``measure``."""
        unmet = self.needs.unmet(session.candidate.capabilities)
        if unmet is not None:
            raise CheckSkipped(unmet)
        return self.measure(session, entry)


__all__ = [
    "KINDS",
    "STATUSES",
    "CaseEntry",
    "Check",
    "CheckFailed",
    "CheckSkipped",
    "FuzzProperty",
    "Kind",
    "Measurement",
    "Needs",
    "every_case",
]
