"""The catalogue as pytest callables, for a library author's own test file.

In the spirit of scikit-learn's ``parametrize_with_checks``::

    from kfac_conformance.frontends.pytest_checks import parametrize_with_checks

    @parametrize_with_checks(MyCandidate(), xfail="kfac-xfail.txt")
    def test_kfac_conformance(kfac_check):
        kfac_check()

An item the expected-failures file names carries pytest's ``xfail`` mark: its failure shows as
XFAIL, its pass as XPASS (a failure under pytest's ``xfail_strict``). An entry that matches no
check of the catalogue is warned about (:class:`UnmatchedExpectedFailure`) when the catalogue
is built, at collection.

``pytest --kfac-candidate SPEC`` (:mod:`kfac_conformance.frontends.pytest_plugin`) runs the same callables.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from kfac_conformance.contract.expected_failures import (
    ExpectedFailure,
    UnmatchedExpectedFailure,
    match,
    read_expected_failures,
    unmatched,
)
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.plan import Item, case_entries, custom_entries, plan
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import apply_expected_failures, execute
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import seeded_baseline


class ConformanceFailure(AssertionError):
    """A failed or errored check, with everything the report would say about it."""


def _failure_text(result: Result) -> str:
    lines = [f"{result.status.upper()} {result.item_id}", result.message.strip()]
    if result.observed is not None:
        lines.append(f"observed {result.observed:.3g}, tolerance {result.tolerance:.3g}")
    if result.diagnosis:
        lines.append(f"diagnosis: {result.diagnosis}")
    return "\n".join(lines)


class KfacCheck:
    """One (check, case) pair; calling it runs the check and raises or skips like a test.

    ``expected_failure`` is the entry of the expected-failures file that names the pair, if
    any: a failure then becomes XFAIL. A pass returns (as an ``xpassed`` result); the item's
    ``xfail`` mark (:meth:`marks`) makes pytest report it as XPASS.
    """

    def __init__(
        self, session: Session, item: Item, expected_failure: ExpectedFailure | None = None
    ) -> None:
        self.session, self.item, self.expected_failure = session, item, expected_failure
        # every check starts from the state at collection, torch's generators seeded
        self.baseline = seeded_baseline()

    def __repr__(self) -> str:
        return self.item.id

    def __call__(self) -> Result:
        result = execute(self.session, self.item, baseline=self.baseline)
        if self.expected_failure is not None:
            result = apply_expected_failures(result, [self.expected_failure], set())
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "xfailed":
            pytest.xfail(result.message)  # does nothing under --runxfail: then it fails below
        if result.status in ("failed", "error", "xfailed"):
            problem = self.item.entry.make_problem().describe()
            raise ConformanceFailure(f"{_failure_text(result)}\nproblem: {problem}")
        return result

    def marks(self, strict_xfail: bool | None = None) -> list[pytest.MarkDecorator]:
        """pytest's ``xfail`` mark for an expected failure, none for the other checks;
        ``strict_xfail=None`` leaves strictness to pytest's ``xfail_strict`` setting."""
        if self.expected_failure is None:
            return []
        entry = self.expected_failure
        strictness = {} if strict_xfail is None else {"strict": strict_xfail}
        return [pytest.mark.xfail(reason=f"{entry.reason} ({entry.location})", **strictness)]


def conformance_checks(
    candidate: Candidate,
    profile: str = "default",
    cases: Sequence[str] = (),
    xfail: str | Path | None = None,
    select: Sequence[str] = (),
) -> list[KfacCheck]:
    """The catalogue for ``candidate`` as callables, in the order the CLI runs them; warns
    (:class:`UnmatchedExpectedFailure`) about each entry of ``xfail`` that matches none."""
    session = Session(candidate, PROFILES[profile])
    expected = read_expected_failures(xfail) if xfail else []
    items = plan(profile, case_entries(profile, custom_entries(cases)), select)
    for entry in unmatched(expected, ((item.id, item.check.id) for item in items)):
        warnings.warn_explicit(
            f"expected failure {entry.pattern!r} matches none of the {len(items)} checks "
            f"collected (profile {profile!r})",
            UnmatchedExpectedFailure,
            filename=entry.source,
            lineno=entry.line,
        )
    return [KfacCheck(session, item, match(expected, item.id, item.check.id)) for item in items]


def parametrize_with_checks(candidate: Candidate, **options) -> pytest.MarkDecorator:
    """``pytest.mark.parametrize("kfac_check", ...)`` over every check of the catalogue."""
    checks = conformance_checks(candidate, **options)
    return pytest.mark.parametrize(
        "kfac_check",
        [pytest.param(check, id=check.item.id, marks=check.marks()) for check in checks],
    )
