"""The fuzzer's properties: the catalogue's checks that declare a
:class:`~kfac_conformance.checks.base.FuzzProperty`, run on one drawn problem and request.

On a drawn example a property runs where its ``applies`` holds (its ``cases`` selector is for
the canonical cases and plays no part), in ascending ``order``, with the candidate's claim
narrowed to the drawn Fisher type and flavour. The first failure whose :func:`signature` is
new raises a :class:`PropertyFailure` of a type of its own, so that hypothesis shrinks each
distinct failure separately.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

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


def fuzz_properties(checks: Sequence[Check]) -> list[Check]:
    """The checks of ``checks`` that are fuzz properties, in the order an example runs them."""
    properties = [check for check in checks if check.fuzz is not None]
    return sorted(properties, key=lambda check: check.fuzz.order)  # stable: catalogue order


PROPERTIES: list[Check] = fuzz_properties(ALL_CHECKS)
PROPERTY_IDS: tuple[str, ...] = tuple(check.id for check in PROPERTIES)


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
        if not check.fuzz.applies(case, request):
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


__all__ = [
    "PROPERTIES",
    "PROPERTY_IDS",
    "PropertyFailure",
    "assert_conforms",
    "check_example",
    "failure_text",
    "fuzz_properties",
    "signature",
]
