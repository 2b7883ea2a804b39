"""Property-based search: draw problems nobody wrote, run the catalogue's properties on them,
shrink what fails, and keep it.

One example is a drawn problem and request (:mod:`kfac_conformance.fuzzing.problems`). Its
properties are the catalogue's checks that declare a ``fuzz`` property
(:mod:`kfac_conformance.fuzzing.properties`), run through
:func:`kfac_conformance.execution.runner.execute` on the drawn case, with the candidate's claim
narrowed to the drawn Fisher type and flavour (so one example costs a few calls, and the
search, not a loop inside a check, covers the requests). Each check says on which drawn
examples it runs; among them:

- ``exactness/*`` on the layers :func:`~kfac_conformance.fuzzing.exact_layers.exactness_map`
  derives;
- ``agreement/*`` against ``kfac_ref`` on every layer (differential; the checks' own
  restriction to non-exact cases does not apply here);
- ``mc/*``, with the catalogue's statistics and their stated false-positive rates
  (docs/statistics.md), when MC is drawn; a statistical failure counts only where
  ``kfac_ref`` passes the same test on the same example;
- ``invariance/*``, ``structure/*`` and ``side-effects/*``, and for candidates that claim
  EKFAC the correction, eigenbasis and Frobenius-optimality checks of ``ekfac/*``;
- on the problems with a module applied twice (drawn only when a property declares
  ``FuzzProperty(weight_tying=True)``), those properties alone.

Each distinct failure (:func:`~kfac_conformance.fuzzing.properties.signature`: its property,
the kind of its first wrong layer and its diagnosis' finding) raises its own exception type, so
hypothesis shrinks each separately; after the first failure only the failed properties run,
which keeps the shrinking cheap, and later rounds search on for other failures, ignoring those
found (:func:`search`). ``max_examples`` counts every example that calls the candidate,
shrinking included, and is never exceeded: hypothesis' last replay of a shrunk failure reuses
the failure instead of calling the candidate again. Failing examples are saved in hypothesis'
example database and replayed first on the next search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase

from kfac_conformance.cases.canonical import Case
from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.contract.problem import Candidate, Request
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.watched_state import GlobalState, seeded_baseline
from kfac_conformance.fuzzing.problems import kfac_problems, kfac_requests
from kfac_conformance.fuzzing.properties import (
    PROPERTIES,
    PROPERTY_IDS,
    PropertyFailure,
    assert_conforms,
    check_example,
)
from kfac_conformance.reference_candidate import ReferenceCandidate

DEFAULT_DATABASE = ".kfac-conformance/fuzz-examples"
# a statistical failure counts only where the reference passes the same test (check_example)
REFERENCE = ReferenceCandidate()
# The last part of the time budget is kept for shrinking (at most this many seconds, and at
# most a quarter of the budget); then the smallest failure found so far stands.
SHRINK_ALLOWANCE = 30.0
# Examples a round may spend after its first failure (hypothesis draws on a little, then
# shrinks): shrinking one failure took up to 222 examples unbounded, which left no budget to
# search for the next; most of the reduction comes in the first few dozen.
SHRINK_EXAMPLES = 60


@dataclass
class Failure:
    """A shrunk failure: the property, the problem and request, and the check's result."""

    property: str
    case: Case
    request: Request
    result: Result
    signature: str
    found_after: tuple[int, float] = (0, 0.0)  # examples and seconds when first met
    shrunk_after: float = 0.0  # seconds into the search when shrinking ended
    case_file: str | None = None
    reproduction: str | None = None

    def to_json(self) -> dict:
        result = self.result.to_json()
        return {
            "property": self.property,
            "status": self.result.status,
            "signature": self.signature,
            "problem": {
                **dataclasses.asdict(self.case),
                "request": dataclasses.asdict(self.request),
                "described": self.case.make_problem().describe(),
            },
            "case_file": self.case_file,
            "reproduction": self.reproduction,
            "observed": result["observed"],
            "tolerance": result["tolerance"],
            "diagnosis": self.result.diagnosis,
            "message": self.result.message,
            "found_after_examples": self.found_after[0],
            "found_after_s": round(self.found_after[1], 3),
            "shrunk_after_s": round(self.shrunk_after, 3),
        }


@dataclass
class SearchState:
    """What a search has done so far; ``progress`` is called after every example."""

    max_examples: int
    time_budget: float
    progress: Callable[[SearchState], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    examples: int = 0  # that called the candidate, shrinking included
    found: int = 0  # failures reported by earlier rounds
    # in this round: each failure's signature and the examples and seconds when first met
    failing: dict[str, tuple[int, float]] = field(default_factory=dict)
    failed_properties: set[str] = field(default_factory=set)  # in this round
    # in this round: each failing example's failure, by the example's repr, for the last replay
    replays: dict[str, PropertyFailure] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def budget_spent(self) -> bool:
        return self.examples >= self.max_examples

    @property
    def out_of_time(self) -> bool:
        """No new examples are drawn once the budget, less the time kept for shrinking, is spent."""
        return self.elapsed > self.time_budget - min(SHRINK_ALLOWANCE, self.time_budget / 4)

    @property
    def shrinking_spent(self) -> bool:
        """The round's first failure was :data:`SHRINK_EXAMPLES` examples ago, or the time
        budget is spent."""
        first = min((examples for examples, _ in self.failing.values()), default=self.examples)
        return self.examples - first >= SHRINK_EXAMPLES or self.elapsed > self.time_budget

    def start_round(self) -> None:
        self.failing, self.failed_properties, self.replays = {}, set(), {}


class _SearchOver(BaseException):
    """The example or time budget ended a round before any failure."""


@dataclass
class SearchOutcome:
    failures: list[Failure]
    examples: int
    seconds: float
    seed: int
    out_of_time: bool


def database_key(candidate: Candidate, properties: Sequence[str] | None, round: int) -> bytes:
    """The example database's key: one per candidate (by name), property selection and round."""
    what = f"kfac-conformance fuzz|{candidate.name}|{sorted(properties or PROPERTY_IDS)}|{round}"
    return hashlib.sha256(what.encode()).digest()


def search(
    candidate: Candidate,
    max_examples: int = 300,
    seed: int = 0,
    time_budget: float = 210.0,
    database: str | None = DEFAULT_DATABASE,
    expected: Sequence[ExpectedFailure] = (),
    properties: Sequence[str] | None = None,
    progress: Callable[[SearchState], None] | None = None,
    max_failures: int | None = None,
) -> SearchOutcome:
    """Search for failing properties of ``candidate``; every failure comes back shrunk.

    The search runs in rounds: hypothesis stops drawing soon after the first failure and
    shrinks what it found, so each later round ignores the failures found so far (by their
    :func:`~kfac_conformance.fuzzing.properties.signature`) and draws on, until
    ``max_examples`` examples (shrinking included: a hard cap) are spent, a round finds
    nothing, or ``max_failures`` are found.
    ``time_budget`` (seconds) bounds the whole search: drawing stops
    :data:`SHRINK_ALLOWANCE` seconds before its end (a quarter of it if shorter), shrinking
    at its end (the example running then still finishes). ``database`` is the folder of
    hypothesis' example database (``None``: none); each round replays the failures it saved
    there before drawing anything new.
    """
    unknown = sorted(set(properties or ()) - set(PROPERTY_IDS))
    if unknown:
        raise ValueError(f"unknown fuzz properties {unknown}; known: {sorted(PROPERTY_IDS)}")
    state = SearchState(max_examples, time_budget, progress)
    failures: list[Failure] = []
    round = 0
    caller = GlobalState.take()
    try:
        while not (state.budget_spent or state.out_of_time):
            known = frozenset(failure.signature for failure in failures)
            found = _round(candidate, state, seed, database, expected, properties, known, round)
            round += 1
            failures += found
            state.found = len(failures)
            if not found or (max_failures is not None and len(failures) >= max_failures):
                break
    finally:
        caller.restore_and_report()  # the caller's generators, not the examples' seed
    if max_failures is not None:
        failures = failures[:max_failures]
    return SearchOutcome(failures, state.examples, state.elapsed, seed, state.out_of_time)


def _round(
    candidate: Candidate,
    state: SearchState,
    seed: int,
    database: str | None,
    expected: Sequence[ExpectedFailure],
    properties: Sequence[str] | None,
    known: frozenset[str],
    round: int,
) -> list[Failure]:
    """One hypothesis run: draw until a new failure, shrink it and any other that hypothesis
    met meanwhile, and return them (or nothing: the budget was spent first)."""
    # every example starts from the seeded state a run's items start from, so that a candidate
    # drawing from torch's global generators gets the same verdict in every search
    baseline = seeded_baseline()
    capabilities = candidate.capabilities
    state.start_round()
    selected = [check for check in PROPERTIES if properties is None or check.id in properties]
    weight_tying = any(check.fuzz.weight_tying for check in selected)

    def example(drawn: tuple[Case, Request]) -> None:
        case, request = drawn
        replay = state.replays.get(repr(drawn))
        if replay is not None:  # as hypothesis' last replay of a shrunk failure: no new call
            raise replay
        final = current_build_context().is_final
        if not (state.failing or final) and (state.budget_spent or state.out_of_time):
            raise _SearchOver  # not an Exception: hypothesis stops without shrinking it
        if state.failing and not final and (state.budget_spent or state.shrinking_spent):
            return  # shrinking past the budget: no further candidate counts as smaller
        state.examples += 1
        try:
            check_example(
                candidate,
                case,
                request,
                state.failed_properties or properties,
                expected,
                baseline,
                known,
                reference=REFERENCE,
            )
        except PropertyFailure as failure:
            state.failing.setdefault(failure.signature, (state.examples, state.elapsed))
            state.failed_properties.add(failure.property_id)
            state.replays[repr(drawn)] = failure
            raise
        finally:
            if state.progress is not None:
                state.progress(state)

    # settings outermost: hypothesis' seed() alone would switch the example database off
    test = settings(
        max_examples=max(1, state.max_examples - state.examples),
        deadline=None,
        database=DirectoryBasedExampleDatabase(database) if database else None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=True,
        print_blob=False,
        verbosity=Verbosity.quiet,
    )(
        hypothesis_seed(seed + round)(
            given(
                st.tuples(
                    kfac_problems(capabilities, weight_tying=weight_tying),
                    kfac_requests(capabilities),
                )
            )(example)
        )
    )
    # one database entry per candidate and round: the test is the same closure for all of them
    test._hypothesis_internal_database_key = database_key(candidate, properties, round)
    try:
        test()
    except _SearchOver:
        return []
    except BaseException as raised:  # noqa: B036 - sorted below; anything else is re-raised
        found = list(_property_failures(raised))
        if not found:
            raise
        return [
            Failure(
                f.property_id,
                f.case,
                f.request,
                f.result,
                f.signature,
                state.failing[f.signature],
                state.elapsed,
            )
            for f in found
        ]
    return []


def _property_failures(raised: BaseException):
    if isinstance(raised, PropertyFailure):
        yield raised
    else:  # an exception group (several failures) holds them in ``exceptions``
        for inner in getattr(raised, "exceptions", ()):
            yield from _property_failures(inner)


__all__ = [
    "DEFAULT_DATABASE",
    "PROPERTIES",
    "PROPERTY_IDS",
    "Failure",
    "PropertyFailure",
    "SearchOutcome",
    "assert_conforms",
    "check_example",
    "kfac_problems",
    "kfac_requests",
    "search",
]
