"""The programmatic API: ``check_candidate`` returns the report the command line writes."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAILING_CANDIDATE, FAILING_SELECT
from zoo.sharing import ConvPatchesIgnoreGeometry

import kfac_conformance
from kfac_conformance import Problem, Report, RunOptions, check_candidate
from kfac_conformance.api import NothingSelected
from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.contract.loading import SpecError, load_case_factory
from kfac_conformance.reference_candidate import ReferenceCandidate

README = Path(__file__).parents[1] / "README.md"
EXAMPLE_MARKER = "<!-- example: check_candidate"
MLP_ITEMS = [
    "structure/symmetric-psd[mlp[tanh-ce-batch]]",
    "side-effects/none[mlp[tanh-ce-batch]]",
]
INLINE = RunOptions(profile="quick", mode="inline", timeout_s=None)


def statuses(report: Report) -> dict[str, str]:
    return {result.item_id: result.status for result in report.results}


def test_kfac_ref_passes_the_selected_items():
    report = check_candidate("kfac_ref", profile="quick", select=MLP_ITEMS)
    assert isinstance(report, Report) and report.complete and report.succeeded
    assert sorted(report.planned) == sorted(MLP_ITEMS)
    assert statuses(report) == dict.fromkeys(report.planned, "passed")
    assert (report.candidate_spec, report.execution, report.timeout_s) == (
        "kfac_ref",
        "worker",
        300,
    )


def test_a_candidate_object_runs_in_this_process_by_default():
    report = check_candidate(ReferenceCandidate(), profile="quick", select=MLP_ITEMS[0])
    assert statuses(report) == {MLP_ITEMS[0]: "passed"}
    assert report.execution == "in-process"
    assert (
        report.candidate_spec == "<kfac_conformance.reference_candidate.ReferenceCandidate object>"
    )


@pytest.fixture(scope="module")
def wrong_report() -> Report:
    return check_candidate(
        FAILING_CANDIDATE, profile="quick", select=FAILING_SELECT, options=INLINE
    )


def test_a_wrong_candidate_gives_failed_items(wrong_report):
    assert wrong_report.complete and wrong_report.succeeded is False
    failed = [r for r in wrong_report.results if r.status == "failed"]
    assert len(failed) == 2 and len(wrong_report.results) == 3
    assert any(result.diagnosis for result in failed)
    for result in failed:
        assert result.observed > result.tolerance
        command = result.reproduction["command"]
        assert command.startswith(f"kfac-conformance run --candidate {FAILING_CANDIDATE} ")
        assert command.endswith(f"--no-supervise --select '{result.item_id}'")
        assert result.reproduction["problem"]["case"] == result.case_id


def test_an_object_has_no_reproduction_command(wrong_report):
    report = check_candidate(
        ConvPatchesIgnoreGeometry(), profile="quick", select=FAILING_SELECT, options=INLINE
    )
    assert statuses(report) == statuses(wrong_report)
    for result in report.results:
        if result.status == "failed":
            assert "command" not in result.reproduction and result.reproduction["problem"]


def test_the_json_equals_what_the_cli_writes_item_by_item(failing_report):
    """The same run (default options) through the command line and through the API."""
    written = json.loads(failing_report.read_text())
    returned = check_candidate(FAILING_CANDIDATE, profile="quick", select=[FAILING_SELECT])
    returned = json.loads(json.dumps(returned.to_json(), default=str))  # as the file stores it
    assert [r["id"] for r in returned["results"]] == [r["id"] for r in written["results"]]
    for ours, theirs in zip(returned.pop("results"), written.pop("results"), strict=True):
        assert ours.pop("duration_s") >= 0 and theirs.pop("duration_s") >= 0
        assert ours == theirs, ours["id"]
    assert returned == written


def test_expected_failures_as_lines_of_a_file():
    report = check_candidate(
        FAILING_CANDIDATE,
        profile="quick",
        select=[FAILING_SELECT],
        xfail=[f"{FAILING_SELECT}  # ignores geometry", "never/matches  # stale"],
        options=INLINE,
    )
    assert sorted(statuses(report).values()) == ["xfailed", "xfailed", "xpassed"]
    assert report.unused_expected_failures == ["never/matches"]
    assert report.succeeded  # an expected failure is no failure, an xpass no error


EXAMPLE_CASE = f"{Path(__file__).parents[1] / 'examples' / 'custom_case.py'}:two_layer_regression"


def _renamed_example_problem() -> Problem:
    """The example's problem under another id, from a callable instead of a spec."""
    problem = load_case_factory(EXAMPLE_CASE)()[0]
    return dataclasses.replace(problem, case_id="api-regression")


def test_custom_cases_from_a_callable_and_from_a_spec():
    report = check_candidate(
        ReferenceCandidate(),
        profile="quick",
        cases=[_renamed_example_problem, EXAMPLE_CASE],
        select=["structure/*[api-regression]", "structure/*[my-two-layer-regression]"],
        options=INLINE,
    )
    assert statuses(report) == {
        "structure/symmetric-psd[api-regression]": "passed",
        "structure/symmetric-psd[my-two-layer-regression]": "passed",
    }


def test_progress_sees_the_report_grow_and_a_ctrl_c_marks_it_interrupted():
    seen: list[Report] = []

    def progress(report: Report) -> None:
        seen.append(len(report.results))
        if len(report.results) == 1:
            raise KeyboardInterrupt

    reports: list[Report] = []
    options = dataclasses.replace(INLINE, progress=lambda r: (reports.append(r), progress(r)))
    with pytest.raises(KeyboardInterrupt):
        check_candidate(ReferenceCandidate(), select=MLP_ITEMS, options=options)
    report = reports[-1]
    assert seen == [0, 1]  # once at the start, then after each result
    assert (report.complete, report.state, report.interruption) == (False, "interrupted", "SIGINT")
    assert len(report.not_run()) == 1


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"candidate": 42},
            TypeError,
            "candidate must be a Candidate (name, capabilities, compute()) or a spec string; "
            "int lacks ['name', 'capabilities', 'compute']",
        ),
        ({"candidate": "no_such_candidate"}, SpecError, "is neither a registered name"),
        ({"profile": "nope"}, ValueError, "unknown profile 'nope'; choose one of"),
        ({"select": ["no-such-check/*"]}, NothingSelected, "no check matches select=['no-such"),
        ({"select": [3]}, TypeError, "select must hold strings, got 3"),
        ({"cases": [3]}, TypeError, "cases must be spec strings or case factories, got 3"),
        ({"cases": ["no_colon"]}, SpecError, "case 'no_colon' is neither a registered name"),
        ({"xfail": "no-such.txt"}, FileNotFoundError, "file 'no-such.txt' does not exist"),
        (
            {"xfail": ["x", ExpectedFailure("y", "why", 1)]},
            TypeError,
            "ExpectedFailure entries (not a mix)",
        ),
        ({"options": "quick"}, TypeError, "options must be RunOptions or None, got str"),
        (
            {"profile": "thorough", "options": RunOptions(profile="quick")},
            ValueError,
            "profile='thorough' and options.profile='quick' disagree",
        ),
        (
            {"candidate": ReferenceCandidate(), "options": RunOptions()},
            ValueError,
            "mode 'supervised' rebuilds the candidate and the cases in a worker process",
        ),
        (
            {"cases": [_renamed_example_problem], "options": RunOptions()},
            ValueError,
            "mode 'supervised' rebuilds the candidate and the cases in a worker process",
        ),
        (
            {"xfail": ["x"], "options": RunOptions(expected=[ExpectedFailure("y", "why", 1)])},
            ValueError,
            "expected failures given twice",
        ),
    ],
)
def test_bad_arguments_give_clear_errors(arguments, error, message):
    candidate = arguments.pop("candidate", "kfac_ref")
    with pytest.raises(error, match=re.escape(message)):
        check_candidate(candidate, **arguments)


def test_the_api_is_exported_lazily():
    assert kfac_conformance.check_candidate is check_candidate
    assert {"check_candidate", "Report", "RunLimits", "RunOptions"} <= set(kfac_conformance.__all__)


def test_the_readme_example_runs(tmp_path):
    text = README.read_text()
    assert EXAMPLE_MARKER in text, "the README lost its check_candidate example"
    block = re.search(r"```python\n(.*?)```", text[text.index(EXAMPLE_MARKER) :], re.DOTALL)
    script = tmp_path / "example.py"
    script.write_text(block.group(1))
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "kfac_ref.json").is_file()
    *results, counts = completed.stdout.splitlines()
    assert len(results) == 7 and sum(line.startswith("xfailed ") for line in results) == 1
    assert "'passed': 0, 'failed': 6" in counts and "'xfailed': 1" in counts  # as the README says
