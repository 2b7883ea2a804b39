"""Whose fault an error is: an exception of the suite's own code is an internal error that asks
for a bug report; a candidate that cannot import its library is an error, never a pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from running import inline
from suite_guard import suite_exceptions

from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.execution.execute import INTERNAL_ERROR, ISSUES_URL, execute
from kfac_conformance.execution.plan import Item, case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.execution.session import Session
from kfac_conformance.reference_candidate import ReferenceCandidate

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")


def _broken_measure(session, entry):
    return {}["a key the suite forgot"]


BROKEN = Check("toy/broken", "the suite's own bug", "none", "guard", _broken_measure)


def test_an_exception_of_the_suite_is_an_internal_error_with_a_bug_report_line():
    entry = CaseEntry("any", lambda: None)
    result = execute(Session(ReferenceCandidate()), Item(BROKEN, entry))
    assert result.status == "error"
    first, *rest = result.message.splitlines()
    assert first == (
        f"{INTERNAL_ERROR} (a defect of the suite, not a verdict on the candidate): "
        "KeyError: 'a key the suite forgot'"
    )
    assert "in _broken_measure" in result.message  # the frames a bug report needs
    assert rest[-1] == f"please report it, with this message, at {ISSUES_URL}"
    assert suite_exceptions([result]) == [f"toy/broken[any]: {result.message}"]


def test_the_bug_report_address_is_the_projects_issues_page():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert ISSUES_URL == urls["Issues"]


class LibraryNotInstalled(ReferenceCandidate):
    name = "library-not-installed"

    def compute(self, problem, request):
        import kfac_conformance_no_such_library  # noqa: F401

        return super().compute(problem, request)


def test_a_candidate_that_cannot_import_its_library_errors_where_raising_passes():
    items = plan(
        "quick",
        case_entries("quick"),
        ["weight-tying/*", "unsupported/*", "exactness/type-2-expand[deep-linear*]"],
    )
    results = list(run_items(LibraryNotInstalled(), items, inline("quick")))
    families = {result.check_id.split("/")[0] for result in results}
    assert families == {"weight-tying", "unsupported", "exactness"}, families
    for result in results:
        assert result.status == "error", result.item_id
        assert result.message.startswith(
            "the candidate could not import kfac_conformance_no_such_library: install it "
            "(ModuleNotFoundError: No module named 'kfac_conformance_no_such_library')\n"
        )
    assert suite_exceptions(results) == []
