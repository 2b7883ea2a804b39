"""Property-based search: draw problems nobody wrote, run the catalogue's properties on them,
shrink what fails, and keep it.

One example is a drawn problem and request (:mod:`kfac_conformance.fuzzing.problems`). Its
properties are the catalogue's checks themselves (:data:`PROPERTIES`), run through
:func:`kfac_conformance.execution.runner.execute` on the drawn case, with the candidate's claim narrowed
to the drawn Fisher type and flavour (so one example costs a few calls, and the search, not a
loop inside a check, covers the requests):

- ``exactness/*`` on the layers :func:`~kfac_conformance.fuzzing.problems.exactness_map` derives;
- ``agreement/*`` against ``kfac_ref`` on every layer (differential; the checks' own
  restriction to non-exact cases does not apply here);
- ``mc/*``, with the catalogue's statistics and their stated false-positive rates
  (docs/statistics.md), when MC is drawn;
- ``invariance/*``, ``structure/*`` and ``side-effects/*``.

Each distinct failure (:func:`signature`) raises its own exception type, so hypothesis shrinks
each separately; after the first failure only the failed properties run, which keeps the
shrinking cheap, and later rounds search on for other failures (:func:`search`). Failing
examples are saved in hypothesis' example database and replayed first on the next search.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase

from kfac_conformance.cases.canonical import Case
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.contract.problem import Candidate, Problem, Request
from kfac_conformance.execution.calling import GlobalState
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import apply_expected_failures, execute
from kfac_conformance.execution.session import Session
from kfac_conformance.fuzzing.problems import DrawnCase, kfac_problems, kfac_requests

DEFAULT_DATABASE = ".kfac-conformance/fuzz-examples"
# The last part of the time budget is kept for shrinking (at most this many seconds, and at
# most a quarter of the budget); then the smallest failure found so far stands.
SHRINK_ALLOWANCE = 30.0
# MC statistics on few Gaussian labels are far from normal (docs/statistics.md, "The excluded
# case"); the statistical properties need at least this many data with MSE.
MIN_MSE_DATA_FOR_STATISTICS = 4


def _num_data(case: Case) -> int:
    if isinstance(case, DrawnCase):
        return sum(case.batch_sizes)
    return case.input_shape[0] * case.num_batches


def _exact_for(key: str) -> Callable[[Case, Request], bool]:
    return lambda case, request: bool(case.exact.get(key))


def _drawn(fisher_type: str) -> Callable[[Case, Request], bool]:
    return lambda case, request: request.fisher_type == fisher_type


def _statistical(case: Case, request: Request) -> bool:
    return request.fisher_type == "mc" and (
        case.loss != "mse" or _num_data(case) >= MIN_MSE_DATA_FOR_STATISTICS
    )


def _continuous_labels(case: Case, request: Request) -> bool:
    """MC labels of MSE: two seeds cannot draw the same (the check's own condition)."""
    return request.fisher_type == "mc" and case.loss == "mse"


def _always(case: Case, request: Request) -> bool:
    return True


def _several_data(case: Case, request: Request) -> bool:
    return _num_data(case) >= 2


def _float64(applies: Callable[[Case, Request], bool]) -> Callable[[Case, Request], bool]:
    """Numbers are compared on float64 problems only: a drawn float32 problem's conditioning is
    unknown, and the reference itself missed the 1e-4 float32 tolerance by 1.5-3.6x on drawn
    problems (cancellation in saturated loss Hessians and in gradients summed over positions).
    float32 problems still run the structure, side-effect and reproducibility properties."""
    return lambda case, request: (
        getattr(case, "dtype", "float64") == "float64" and applies(case, request)
    )


# Property id (a catalogue check id) -> when it runs on a drawn (case, request); cheap and
# most telling first, the statistical ones last.
APPLICABILITY: dict[str, Callable[[Case, Request], bool]] = {
    **{
        f"exactness/{key.replace('/', '-')}": _float64(_exact_for(key))
        for key in ("type-2/expand", "type-2/reduce", "empirical/expand", "empirical/reduce")
    },
    **{
        f"agreement/{fisher_type}": _float64(_drawn(fisher_type))
        for fisher_type in ("type-2", "empirical", "forward-only")
    },
    "structure/symmetric-psd": _always,
    "invariance/mean-vs-sum": _float64(_always),
    "invariance/batch-splitting": _float64(_several_data),
    "invariance/permutation": _float64(_several_data),
    "invariance/flattened-output": _float64(lambda case, request: case.per_position),
    "invariance/bias-joint-vs-separate": _float64(_always),
    "side-effects/none": _always,
    "side-effects/repeatable": _always,
    # EKFAC (George et al. 2018), for candidates that claim it: exact on every drawn problem
    "ekfac/correction-exact-type-2": _float64(_drawn("type-2")),
    "ekfac/correction-exact-empirical": _float64(_drawn("empirical")),
    "ekfac/kfac-eigenbasis": _float64(_always),
    "ekfac/frobenius-optimal": _float64(_always),
    "mc/seed-reproducible": _drawn("mc"),
    "mc/seeds-differ": _float64(_continuous_labels),
    "mc/unbiased": _float64(_statistical),
    "mc/sqrt-m-convergence": _float64(_statistical),
}
_CHECKS = {check.id: check for check in ALL_CHECKS}
PROPERTIES: list[Check] = [_CHECKS[check_id] for check_id in APPLICABILITY]


class PropertyFailure(AssertionError):
    """A property failed (or the candidate raised) on a drawn problem; subclassed per
    :func:`signature`, so that hypothesis shrinks each distinct failure on its own."""

    def __init__(self, result: Result, case: Case, request: Request) -> None:
        self.result, self.case, self.request = result, case, request
        self.property_id = result.check_id
        super().__init__(failure_text(result, case, request))


_FAILURE_TYPES: dict[str, type[PropertyFailure]] = {}


def signature(result: Result) -> str:
    """What makes two failures the same: the property for a failed check; for an error, the
    exception's first line with numbers masked, whichever property met it."""
    if result.status == "error":
        return "error: " + re.sub(r"\d+", "#", (result.message.splitlines() or [""])[0])
    return f"failed: {result.check_id}"


def failure_type(key: str) -> type[PropertyFailure]:
    if key not in _FAILURE_TYPES:
        name = "PropertyFailure_" + re.sub(r"\W", "_", key)[:80]
        _FAILURE_TYPES[key] = type(name, (PropertyFailure,), {})
    return _FAILURE_TYPES[key]


def failure_text(result: Result, case: Case, request: Request) -> str:
    lines = [f"{result.status.upper()} {result.check_id} on {case.id}", result.message.strip()]
    if result.observed is not None:
        lines.append(f"observed {result.observed:.3g}, tolerance {result.tolerance:.3g}")
    if result.diagnosis:
        lines.append(f"diagnosis: {result.diagnosis}")
    lines += [f"drawn: {drawn_request(request)}", f"case: {case!r}"]
    return "\n".join(lines)


def drawn_request(request: Request) -> str:
    return f"fisher_type={request.fisher_type!r}, kfac_approx={request.kfac_approx!r}"


class _Narrowed:
    """The candidate, claiming only the drawn request's Fisher type and flavour."""

    def __init__(self, candidate: Candidate, request: Request) -> None:
        self.candidate, self.name = candidate, candidate.name
        self.capabilities = dataclasses.replace(
            candidate.capabilities,
            fisher_types=frozenset({request.fisher_type}) & candidate.capabilities.fisher_types,
            flavours=frozenset({request.kfac_approx}) & candidate.capabilities.flavours,
        )

    def compute(self, problem: Problem, request: Request):
        return self.candidate.compute(problem, request)


def check_example(
    candidate: Candidate,
    case: Case,
    request: Request,
    properties: Sequence[str] | None = None,
    expected: Sequence[ExpectedFailure] = (),
    baseline: GlobalState | None = None,
    known: frozenset[str] = frozenset(),
) -> list[Result]:
    """Run the properties (default: all of :data:`PROPERTIES`) on one drawn problem and
    request; raise the first failure whose :func:`signature` is not ``known`` as a
    :class:`PropertyFailure`."""
    session = Session(_Narrowed(candidate, request), PROFILES["default"])
    entry = CaseEntry(case.id, case.make_problem, case)
    baseline = baseline or GlobalState.take()
    results = []
    for check in PROPERTIES:
        if properties is not None and check.id not in properties:
            continue
        if not APPLICABILITY[check.id](case, request):
            continue
        result = apply_expected_failures(
            execute(session, Item(check, entry), baseline), expected, set()
        )
        baseline.restore_and_report()
        if result.status in ("failed", "error") and signature(result) not in known:
            raise failure_type(signature(result))(result, case, request)
        results.append(result)
    return results


def assert_conforms(candidate: Candidate, problem: Case, request: Request) -> None:
    """Assert every fuzz property of ``candidate`` on a drawn ``problem`` and ``request``.

    ``problem`` is what :func:`~kfac_conformance.fuzzing.problems.kfac_problems` draws (any
    :class:`~kfac_conformance.cases.canonical.Case` will do); properties outside the candidate's claim are
    skipped. A failure raises :class:`PropertyFailure` (an ``AssertionError``) whose message
    holds the check's message, the diagnosis and the ``repr`` of the case and request.
    """
    check_example(candidate, problem, request)


@dataclass
class Failure:
    """A shrunk failure: the property, the problem and request, and the check's result."""

    property: str
    case: Case
    request: Request
    result: Result
    found_after: tuple[int, float] = (0, 0.0)  # examples and seconds when first met
    shrunk_after: float = 0.0  # seconds into the search when shrinking ended
    case_file: str | None = None
    reproduction: str | None = None

    def to_json(self) -> dict:
        result = self.result.to_json()
        return {
            "property": self.property,
            "status": self.result.status,
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
    examples: int = 0
    found: int = 0  # failures reported by earlier rounds
    failed_properties: set[str] = field(default_factory=set)  # in this round
    first_failure: tuple[int, float] = (0, 0.0)  # examples and seconds, in this round

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def out_of_time(self) -> bool:
        """No new examples are drawn once the budget, less the time kept for shrinking, is spent."""
        return self.elapsed > self.time_budget - min(SHRINK_ALLOWANCE, self.time_budget / 4)

    @property
    def shrinking_over(self) -> bool:
        return self.elapsed > self.time_budget


class _OutOfTime(BaseException):
    """The time budget ended a round before any failure."""


@dataclass
class SearchOutcome:
    failures: list[Failure]
    examples: int
    seconds: float
    seed: int
    out_of_time: bool


def database_key(candidate: Candidate, properties: Sequence[str] | None, round: int) -> bytes:
    """The example database's key: one per candidate (by name), property selection and round."""
    what = f"kfac-conformance fuzz|{candidate.name}|{sorted(properties or APPLICABILITY)}|{round}"
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

    The search runs in rounds: hypothesis stops drawing at the first failure and shrinks it,
    so each later round ignores the failures found so far (by :func:`signature`) and draws on,
    until ``max_examples`` examples (shrinking included) are spent, a round finds nothing, or
    ``max_failures`` are found.
    ``time_budget`` (seconds) bounds the whole search: drawing stops
    :data:`SHRINK_ALLOWANCE` seconds before its end (a quarter of it if shorter), shrinking
    at its end (the example running then, and the final replay, still finish). ``database``
    is the folder of hypothesis' example database (``None``: none); each round replays the
    failures it saved there before drawing anything new.
    """
    unknown = sorted(set(properties or ()) - set(APPLICABILITY))
    if unknown:
        raise ValueError(f"unknown fuzz properties {unknown}; known: {sorted(APPLICABILITY)}")
    state = SearchState(max_examples, time_budget, progress)
    failures: list[Failure] = []
    while state.examples < max_examples and not state.out_of_time:
        known = frozenset(signature(failure.result) for failure in failures)
        found = _round(candidate, state, seed, database, expected, properties, known, len(failures))
        failures += found
        state.found = len(failures)
        if not found or (max_failures is not None and len(failures) >= max_failures):
            break
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
    """One hypothesis run: draw until a new failure, shrink it, and return it (or nothing)."""
    baseline = GlobalState.take()
    capabilities = candidate.capabilities
    state.failed_properties = set()

    def example(drawn: tuple[Case, Request]) -> None:
        if not state.failed_properties and state.out_of_time:
            raise _OutOfTime  # not an Exception: hypothesis stops without shrinking it
        if (
            state.failed_properties
            and state.shrinking_over
            and not current_build_context().is_final
        ):
            return  # shrinking past its allowance: no further candidate counts as smaller
        case, request = drawn
        state.examples += 1
        selected = state.failed_properties or properties
        try:
            check_example(candidate, case, request, selected, expected, baseline, known)
        except PropertyFailure as failure:
            if not state.failed_properties:
                state.first_failure = (state.examples, state.elapsed)
            state.failed_properties.add(failure.property_id)
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
            given(st.tuples(kfac_problems(capabilities), kfac_requests(capabilities)))(example)
        )
    )
    # one database entry per candidate and round: the test is the same closure for all of them
    test._hypothesis_internal_database_key = database_key(candidate, properties, round)
    try:
        test()
    except _OutOfTime:
        return []
    except BaseException as raised:  # noqa: B036 - sorted below; anything else is re-raised
        found = list(_property_failures(raised))
        if not found:
            raise
        return [
            Failure(f.property_id, f.case, f.request, f.result, state.first_failure, state.elapsed)
            for f in found
        ]
    return []


def _property_failures(raised: BaseException):
    if isinstance(raised, PropertyFailure):
        yield raised
    else:  # an exception group (several failures) holds them in ``exceptions``
        for inner in getattr(raised, "exceptions", ()):
            yield from _property_failures(inner)


def case_file_text(failure: Failure, candidate_spec: str, path: str) -> str:
    """A standalone ``--case`` file that rebuilds the shrunk problem deterministically."""
    message = failure.result.message.strip().replace('"""', "'''")
    if failure.result.status == "error":  # the exception, without the traceback's local paths
        message = message.splitlines()[0]
    diagnosis = f"\nDiagnosis: {failure.result.diagnosis}\n" if failure.result.diagnosis else ""
    return f'''"""A failure found and shrunk by `kfac-conformance fuzz`: {failure.property} on {candidate_spec}.

{message}
{diagnosis}
Drawn: {drawn_request(failure.request)}

Reproduce through the catalogue:

    {reproduction_command(candidate_spec, path, failure.case.id)}
"""

from kfac_conformance.fuzzing.problems import DrawnCase
from kfac_conformance.contract.problem import Request

CASE = {failure.case!r}
REQUEST = {failure.request!r}


def problem():
    """The shrunk problem, rebuilt from its seed (the same every call)."""
    return CASE.make_problem()
'''


def reproduction_command(candidate_spec: str, path: str, case_id: str) -> str:
    return (
        f"kfac-conformance run --candidate {candidate_spec} --case {path}:problem "
        f"--select '*[{case_id}]'"
    )


__all__ = [
    "DEFAULT_DATABASE",
    "PROPERTIES",
    "Failure",
    "PropertyFailure",
    "SearchOutcome",
    "assert_conforms",
    "check_example",
    "kfac_problems",
    "kfac_requests",
    "search",
]
