"""The catalogue as pytest callables, for a library author's own test file.

In the spirit of scikit-learn's ``parametrize_with_checks``::

    from kfac_conformance.frontends.pytest_checks import parametrize_with_checks

    @parametrize_with_checks(MyCandidate(), xfail="kfac-xfail.txt")
    def test_kfac_conformance(kfac_check):
        kfac_check()

``pytest --kfac-candidate SPEC`` (:mod:`kfac_conformance.frontends.pytest_plugin`) runs the same callables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from kfac_conformance.contract.expected_failures import ExpectedFailure, read_expected_failures
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.calling import GlobalState
from kfac_conformance.execution.plan import Item, case_entries, custom_entries, plan
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import apply_expected_failures, execute
from kfac_conformance.execution.session import Session


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
    """One (check, case) pair; calling it runs the check and raises or skips like a test."""

    def __init__(self, session: Session, item: Item, expected: Sequence[ExpectedFailure]) -> None:
        self.session, self.item, self.expected = session, item, list(expected)
        self.baseline = GlobalState.take()  # every check starts from the state at collection

    def __repr__(self) -> str:
        return self.item.id

    def __call__(self) -> Result:
        result = execute(self.session, self.item, baseline=self.baseline)
        result = apply_expected_failures(result, self.expected, set())
        if result.status == "skipped":
            pytest.skip(result.message)
        if result.status == "xfailed":
            pytest.xfail(result.message)
        if result.status in ("failed", "error"):
            problem = self.item.entry.make_problem().describe()
            raise ConformanceFailure(f"{_failure_text(result)}\nproblem: {problem}")
        return result


def conformance_checks(
    candidate: Candidate,
    profile: str = "default",
    cases: Sequence[str] = (),
    xfail: str | Path | None = None,
    select: Sequence[str] = (),
) -> list[KfacCheck]:
    """The catalogue for ``candidate`` as callables, in the order the CLI runs them."""
    session = Session(candidate, PROFILES[profile])
    expected = read_expected_failures(xfail) if xfail else []
    items = plan(profile, case_entries(profile, custom_entries(cases)), select)
    return [KfacCheck(session, item, expected) for item in items]


def parametrize_with_checks(candidate: Candidate, **options) -> pytest.MarkDecorator:
    """``pytest.mark.parametrize("kfac_check", ...)`` over every check of the catalogue."""
    checks = conformance_checks(candidate, **options)
    return pytest.mark.parametrize("kfac_check", checks, ids=[check.item.id for check in checks])
