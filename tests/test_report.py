"""The JSON report (schema v2) and the text summary never lie by omission."""

from __future__ import annotations

import json

import torch

from kfac_conformance.execution.result import Result
from kfac_conformance.reports.report import SCHEMA_VERSION, Report, summary_text

PLANNED = ["a/x[c1]", "a/y[c1]", "b/z[c2]", "b/z[c3]"]
TOP_LEVEL = {
    "schema_version", "suite_version", "complete", "state", "interruption", "candidate",
    "torch_version", "device", "profile", "timeout_s", "isolate", "execution",
    "max_consecutive_timeouts", "maxfail", "max_time_s", "stopped", "summary", "not_run",
    "unused_expected_failures", "results", "scale_summary",
}  # fmt: skip
RESULT_FIELDS = {
    "id", "check_id", "case_id", "status", "message", "observed", "tolerance", "diagnosis",
    "reproduction", "duration_s", "evidence", "scale",
}  # fmt: skip


def report_with_three_results() -> Report:
    report = Report("spec.py:C", "cand", "1.2", "quick", "cpu", list(PLANNED), timeout_s=5.0)
    report.results += [
        Result("a/x", "c1", "passed", observed=1e-12, tolerance=1e-10),
        Result("a/y", "c1", "failed", "layer '0': relative error\nsecond line", 0.5, 1e-10),
        Result("b/z", "c2", "error", "timed out after 5 s", observed=float("inf"), tolerance=1.0),
    ]
    return report


def test_schema_fields_and_counts():
    data = report_with_three_results().to_json()
    assert set(data) == TOP_LEVEL
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert data["candidate"] == {
        "spec": "spec.py:C",
        "name": "cand",
        "version": "1.2",
        "conventions": {"curvature": "tutorial", "empirical_fisher": "tutorial"},
        "capabilities": None,
    }
    assert (data["torch_version"], data["device"], data["profile"]) == (
        torch.__version__,
        "cpu",
        "quick",
    )
    assert (data["timeout_s"], data["isolate"]) == (5.0, False)
    assert data["summary"] == {
        "total": 4, "ran": 3, "passed": 1, "failed": 1, "error": 1, "skipped": 0,
        "xfailed": 0, "xpassed": 0, "not_run": 1,
    }  # fmt: skip
    assert data["not_run"] == ["b/z[c3]"]
    assert all(set(result) == RESULT_FIELDS for result in data["results"])
    assert [result["id"] for result in data["results"]] == PLANNED[:3]


def test_state_says_running_interrupted_or_complete():
    report = report_with_three_results()
    assert (report.to_json()["complete"], report.state) == (False, "running")
    report.interruption = "SIGINT"
    assert (report.to_json()["state"], report.to_json()["interruption"]) == (
        "interrupted",
        "SIGINT",
    )
    report = report_with_three_results()
    report.complete = True
    assert report.state == "complete"
    assert not report.succeeded  # complete, but a check failed and one errored


def test_succeeded_only_when_complete_without_failures_or_errors():
    report = Report("s", "c", None, "quick", "cpu", ["a/x[c1]"])
    report.results.append(Result("a/x", "c1", "passed"))
    assert not report.succeeded  # not marked complete
    report.complete = True
    assert report.succeeded


def test_write_is_atomic_valid_json_even_with_non_finite_numbers(tmp_path):
    path = tmp_path / "nested" / "report.json"
    report_with_three_results().write(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON readers accept it
    data = json.loads(text)
    assert (data["results"][2]["observed"], data["results"][2]["tolerance"]) == ("inf", 1.0)


def test_summary_states_every_count_and_what_did_not_run():
    report = report_with_three_results()
    report.interruption = "SIGINT"
    text = summary_text(report)
    assert text.splitlines()[-1] == (
        "cand: 3 checks ran of 4 (INCOMPLETE, SIGINT: 1 not run): 1 passed, 1 failed, "
        "1 errors, 0 skipped, 0 xfailed, 0 xpassed"
    )
    assert "NOT RUN (1): b/z[c3]" in text
    assert "FAILED a/y[c1]\n  layer '0': relative error\n  second line\n" in text
    assert "ERROR b/z[c2]\n  timed out after 5 s\n  observed inf, tolerance 1" in text


def test_summary_of_a_complete_run_lists_nothing_as_not_run():
    report = report_with_three_results()
    report.results.append(Result("b/z", "c3", "skipped", "CUDA is not available on this machine"))
    report.complete = True
    text = summary_text(report)
    assert "NOT RUN" not in text
    assert "4 checks ran of 4 (complete): 1 passed, 1 failed, 1 errors, 1 skipped" in text
