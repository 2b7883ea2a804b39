"""pytest front end: ``pytest --kfac-candidate SPEC`` runs the catalogue as ordinary tests.

Each (check, case) pair becomes one test named ``check_id[case_id]``, so ``-k``, ``-x``,
``--junitxml`` and ``-n auto`` (pytest-xdist) work. Library authors can instead parametrize a
test of their own, in the spirit of scikit-learn's ``parametrize_with_checks``::

    from kfac_conformance.pytest_plugin import parametrize_with_checks

    @parametrize_with_checks(MyCandidate(), xfail="kfac-xfail.txt")
    def test_kfac_conformance(kfac_check):
        kfac_check()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from kfac_conformance.calling import GlobalState
from kfac_conformance.expected_failures import ExpectedFailure, read_expected_failures
from kfac_conformance.loading import load_candidate
from kfac_conformance.problem import Candidate
from kfac_conformance.runner import (
    Item,
    Result,
    apply_expected_failures,
    case_entries,
    custom_entries,
    execute,
    plan,
)
from kfac_conformance.session import PROFILES, Session


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


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kfac-conformance")
    group.addoption(
        "--kfac-candidate", metavar="SPEC", help="run the KFAC conformance checks against SPEC"
    )
    group.addoption("--kfac-profile", default="default", choices=sorted(PROFILES))
    group.addoption(
        "--kfac-case", action="append", default=[], metavar="SPEC", help="extra problems"
    )
    group.addoption("--kfac-xfail", metavar="FILE", help="expected-failures file of the candidate")


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("--kfac-candidate", default=None))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With --kfac-candidate and no explicit paths, collect only the catalogue.
    if _active(config) and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


class ConformanceItem(pytest.Item):
    def __init__(self, *, check: KfacCheck, **kwargs) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        self.check()

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"kfac-conformance: {self.name}"


def pytest_configure(config: pytest.Config) -> None:
    if _active(config):
        # the problems are tiny: a second intra-op thread only adds synchronisation
        torch.set_num_threads(1)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list
) -> None:
    if not _active(config):
        return
    candidate = load_candidate(config.getoption("--kfac-candidate"))
    checks = conformance_checks(
        candidate,
        profile=config.getoption("--kfac-profile"),
        cases=config.getoption("--kfac-case"),
        xfail=config.getoption("--kfac-xfail"),
    )
    for check in checks:
        item = ConformanceItem.from_parent(session, name=check.item.id, check=check)
        # with pytest-xdist's --dist loadgroup, a case's checks share one worker and its caches
        item.add_marker(pytest.mark.xdist_group(check.item.entry.id))
        items.append(item)
