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
    "reproduction", "duration_s", "evidence", "scale", "details",
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


def report_with_skips() -> Report:
    report = report_with_three_results()
    skips = {
        "c/s[c1]": "not supported: layer types ['Conv2d']",
        "c/s[c2]": "not supported: fisher types ['mc']",
        "c/s[c3]": "not supported: layer types ['Conv2d']\nnote: a second line",
        "c/t[c1]": "not supported: fisher types ['mc']",
        "c/t[c2]": "not supported: layer types ['Conv2d']",
    }
    report.planned += list(skips)
    report.results.append(Result("b/z", "c3", "passed"))
    for item_id, reason in skips.items():
        check_id, _, case_id = item_id.partition("[")
        report.results.append(Result(check_id, case_id[:-1], "skipped", reason))
    report.complete = True
    return report


def test_the_summary_puts_failures_first_then_skips_by_reason_then_the_table_last():
    text = summary_text(report_with_skips())
    lines = text.splitlines()
    failure, skips = lines.index("FAILED a/y[c1]"), lines.index("SKIPPED (5) by reason:")
    table = next(i for i, line in enumerate(lines) if line.startswith("family "))
    assert failure < lines.index("ERROR b/z[c2]") < skips < table
    # grouped by their first line, most frequent first
    assert lines[skips + 1 : skips + 3] == [
        "  3  not supported: layer types ['Conv2d']",
        "  2  not supported: fisher types ['mc']",
    ]
    assert lines[skips + 3] == ""
    assert [line.split() for line in lines[table + 2 : table + 5]] == [
        ["a", "1", "1", "0", "0", "0", "0"],
        ["b", "1", "0", "1", "0", "0", "0"],
        ["c", "0", "0", "0", "5", "0", "0"],
    ]
    assert lines[table + 5 :] == [
        "",
        "cand: 9 checks ran of 9 (complete): 2 passed, 1 failed, 1 errors, 5 skipped, "
        "0 xfailed, 0 xpassed",
    ]


def test_quiet_gives_one_line_per_failure_with_its_diagnosis():
    report = report_with_skips()
    report.results[1].diagnosis = "off by a constant factor x 2"
    text = summary_text(report, quiet=True)
    assert text.splitlines()[:2] == [
        "FAILED a/y[c1]: layer '0': relative error; diagnosis: off by a constant factor x 2",
        "ERROR b/z[c2]: timed out after 5 s",
    ]
    assert "second line" not in text and "observed" not in text
    assert "SKIPPED (5) by reason:" in text


def test_a_run_without_problems_or_skips_prints_the_table_and_the_totals_only():
    report = Report("s", "c", None, "quick", "cpu", ["a/x[c1]"], complete=True)
    report.results.append(Result("a/x", "c1", "passed"))
    assert summary_text(report).splitlines()[0].startswith("family ")


def test_a_report_read_back_from_json_gives_the_same_summary(tmp_path):
    for report in (report_with_three_results(), report_with_skips()):
        report.unused_expected_failures = ["never/matches"]
        report.write(tmp_path / "report.json")
        again = Report.from_json(json.loads((tmp_path / "report.json").read_text()))
        assert summary_text(again) == summary_text(report)
        assert again.to_json() == report.to_json()


def test_the_report_command_prints_the_summary_when_nothing_else_is_asked(tmp_path, capsys):
    from kfac_conformance.frontends.cli import main

    report = report_with_skips()
    report.write(tmp_path / "report.json")
    assert main(["report", str(tmp_path / "report.json"), "--format", "text"]) == 0
    assert capsys.readouterr().out == summary_text(report) + "\n"


def test_rewriting_after_every_result_encodes_each_result_once(tmp_path, monkeypatch):
    """The CLI rewrites the report after every result: re-encoding them all each time made a
    default run's cost grow with the square of its length (80 s instead of about 40 s)."""
    encoded = []
    original = Result.to_json
    monkeypatch.setattr(Result, "to_json", lambda self: encoded.append(1) or original(self))
    planned = [f"c/x[case{i}]" for i in range(50)]
    report = Report("spec", "name", None, "quick", "cpu", planned)
    path = tmp_path / "report.json"
    for i in range(50):
        report.results.append(Result("c/x", f"case{i}", "failed", "wrong", observed=float("inf")))
        report.write(path)
    assert len(encoded) == 50
    report.results[7].status, report.results[7].message = "xfailed", "expected failure (X1)"
    report.write(path)
    assert len(encoded) == 51  # a result changed after it was encoded is encoded again
    written = json.loads(path.read_text())
    assert written["results"][7]["status"] == "xfailed"
    assert written["results"][3]["observed"] == "inf"
    assert [r["id"] for r in written["results"]] == planned
    assert written == json.loads(json.dumps(report.to_json(), default=str))
