"""The fuzzer's properties: the catalogue's checks that declare a
:class:`~kfac_conformance.checks.base.FuzzProperty`, run on one drawn problem and request.

On a drawn example a property runs where its ``runs_on`` holds (its ``cases`` selector is for
the canonical cases and plays no part), in ascending ``order``, with the candidate's claim
narrowed to the drawn Fisher type and flavour. The first failure whose :func:`signature` is
new raises a :class:`PropertyFailure` of a type of its own, so that hypothesis shrinks each
distinct failure separately.

Two failures are the same when they share their property, the kind of their first wrong layer
and the finding of their diagnosis: the same defect met on problems of other sizes gives
other numbers (factors, counts, layer names) but the same signature, while a defect of
convolutions hides no defect of Linear layers behind it, nor one diagnosis another.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from kfac_conformance.cases.architectures import resolve_tied
from kfac_conformance.cases.canonical import Case
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.contract.problem import Candidate, Problem, Request
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import apply_expected_failures, execute
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import GlobalState, seeded_baseline


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
        self.property_id, self.signature = result.check_id, signature(result, case)
        super().__init__(failure_text(result, case, request))


_FAILURE_TYPES: dict[str, type[PropertyFailure]] = {}


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_LIST = re.compile(r"\[[^\]]*\]")
_LAYER = re.compile(r"layer '([^']+)'")


def signature(result: Result, case: Case) -> str:
    """What makes two failures the same: for a failed check, its property, the kind of its
    first wrong layer (:func:`layer_kind`) and the :func:`finding` of its diagnosis; for an
    error, the exception's first line with numbers masked, whichever property met it."""
    if result.status == "error":
        return "error: " + _NUMBER.sub("#", (result.message.splitlines() or [""])[0])
    layer = layer_kind(result, case) or "no layer"
    return f"failed: {result.check_id} on {layer}: {finding(result.diagnosis)}"


def layer_kind(result: Result, case: Case) -> str | None:
    """The architecture kind (``linear``, ``conv2d``) of the layer a failure names first: the
    layer of its evidence, else the first ``layer '<name>'`` of its message."""
    name = (result.evidence or {}).get("layer")
    if name is None:
        match = _LAYER.search(result.message)
        name = match.group(1) if match else None
    if name is None or not name.isdigit() or int(name) >= len(case.architecture):
        return None
    return resolve_tied(case.architecture, case.architecture[int(name)])[0]


def finding(diagnosis: str | None) -> str:
    """A diagnosis' first finding, without what differs between problems that share a defect:
    numbers, lists of layers, and how a factor is named or explained."""
    if not diagnosis:
        return "no diagnosis"
    first = re.split(r"; |: | = ", diagnosis, maxsplit=1)[0]
    return _NUMBER.sub("#", _LIST.sub("[...]", first)).rstrip("?")


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
    reference: Candidate | None = None,
) -> list[Result]:
    """Run the properties (default: all of :data:`PROPERTIES`) on one drawn problem and
    request; raise the first failure whose :func:`signature` is not ``known`` as a
    :class:`PropertyFailure`.

    With ``reference`` (the search passes ``kfac_ref``), a statistical property's failure
    counts only where ``reference`` passes the same property on the same example: where the
    reference fails it too, the test is wrong there, not the candidate. Drawn problems reach
    such places (``mc/unbiased`` on a softmax so saturated that its 128 MC samples never draw
    the rare class: every estimate is the same, far below the target), and a shrinker, which
    tries hundreds of examples for any failure, ends on them.
    """
    if baseline is None:  # from the seeded state a run's items start from, as in a search
        caller = GlobalState.take()
        try:
            return check_example(
                candidate, case, request, properties, expected, seeded_baseline(), known, reference
            )
        finally:
            caller.restore_and_report()
    session = Session(_Narrowed(candidate, request), PROFILES["default"])
    entry = CaseEntry(case.id, case.make_problem, case, drawn_request=request)
    results = []
    for check in PROPERTIES:
        if properties is not None and check.id not in properties:
            continue
        if not check.fuzz.runs_on(case, request):
            continue
        result = apply_expected_failures(
            execute(session, Item(check, entry), baseline), expected, set()
        )
        baseline.restore_and_report()
        failed = result.status in ("failed", "error") and signature(result, case) not in known
        if failed and reference is not None and check.kind == "statistical":
            failed = not _fails_alike(reference, Item(check, entry), request, baseline)
        if failed:
            raise failure_type(signature(result, case))(result, case, request)
        results.append(result)
    return results


def _fails_alike(reference: Candidate, item: Item, request: Request, baseline: GlobalState) -> bool:
    result = execute(Session(_Narrowed(reference, request), PROFILES["default"]), item, baseline)
    baseline.restore_and_report()
    return result.status == "failed"


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
    "finding",
    "fuzz_properties",
    "layer_kind",
    "signature",
]
