"""The command line: exit codes, usage errors, and a report on disk whatever stops the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import hostile
import pytest
import torch
from running import quick_run_command

from kfac_conformance.contract.loading import candidate_availability
from kfac_conformance.frontends.cli import main
from kfac_conformance.frontends.environment import CANDIDATE_VARIABLE, NO_CANDIDATE

HOSTILE = str(Path(hostile.__file__))
MLP = "mlp[tanh-ce-batch]"
ONE_ITEM = f"side-effects/none[{MLP}]"
TWO_ITEMS = ["--select", ONE_ITEM, "--select", f"side-effects/repeatable[{MLP}]"]


def run_cli(tmp_path: Path, *args: str) -> tuple[int, dict | None]:
    """``run`` on the quick profile; the reference unless ``args`` name another candidate."""
    report = tmp_path / "report.json"
    code = main(
        ["run", "--candidate", "kfac_ref", "--profile", "quick", "-q"]
        + ["--report-json", str(report), *args]
    )
    return code, json.loads(report.read_text()) if report.exists() else None


def spawn(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    report = tmp_path / "report.json"
    command = quick_run_command()
    process = subprocess.Popen(
        [*command, "--report-json", str(report), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidate", "no_such_candidate"], "neither a registered name nor of the form"),
        (["--candidate", "missing.py:Candidate"], "file 'missing.py' does not exist"),
        (["--candidate", f"{HOSTILE}:NoSuchClass"], "has no attribute 'NoSuchClass'"),
        (["--candidate", "kfac_conformance.no_such_module:X"], "cannot import module"),
        (["--select", "no-such-check/*"], "no check matches --select ['no-such-check/*']"),
        (["--timeout", "-1"], "--timeout must be positive, or 0 for no limit; got -1"),
        (
            ["--xfail", "no-such-file.txt"],
            "expected-failures file 'no-such-file.txt' does not exist",
        ),
    ],
)
def test_usage_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    code, report = run_cli(tmp_path, *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert report is None  # nothing ran, so nothing claims to have


def test_a_candidate_file_that_fails_to_import_is_a_usage_error(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('the backend is missing')\n")
    code, _ = run_cli(tmp_path, "--candidate", f"{broken}:Candidate")
    assert code == 2
    assert "failed: ImportError: the backend is missing" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    assert run_cli(tmp_path, "--device", "cuda")[0] == 2
    assert "--device cuda was given but CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "fuzz"])
@pytest.mark.parametrize("variable", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_no_candidate_exits_2_with_one_line_saying_what_to_pass(
    monkeypatch, capsys, command, variable
):
    monkeypatch.delenv(CANDIDATE_VARIABLE, raising=False)
    if variable is not None:
        monkeypatch.setenv(CANDIDATE_VARIABLE, variable)
    assert main([command]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {NO_CANDIDATE}\n"
    assert "--candidate SPEC" in NO_CANDIDATE and CANDIDATE_VARIABLE in NO_CANDIDATE
    assert captured.out == ""


def test_the_environment_variable_names_the_candidate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CANDIDATE_VARIABLE, f"{HOSTILE}:Raising")
    report = tmp_path / "report.json"
    code = main(["run", "--profile", "quick", "-q", "--report-json", str(report), *TWO_ITEMS])
    assert code == 1
    assert json.loads(report.read_text())["candidate"]["spec"] == f"{HOSTILE}:Raising"
    # the option wins over the variable
    assert main(["run", "--candidate", "kfac_ref", "--profile", "quick", "-q", *TWO_ITEMS]) == 0


def test_list_candidates_shows_whether_each_can_run(capsys):
    assert main(["list-candidates"]) == 0
    lines = capsys.readouterr().out.splitlines()
    availability = candidate_availability()
    assert len(lines) == len(availability)
    for line, (name, status) in zip(lines, availability.items(), strict=True):
        assert line.split(maxsplit=1) == [name, status]
    assert "kfac_ref             built in" in lines


def test_an_unknown_option_is_a_usage_error(capsys):
    assert main(["run", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_a_passing_run_exits_0_with_a_complete_report(tmp_path, capsys):
    code, report = run_cli(tmp_path, *TWO_ITEMS)
    assert code == 0
    assert (report["complete"], report["state"], report["not_run"]) == (True, "complete", [])
    assert report["summary"]["ran"] == report["summary"]["passed"] == 2
    assert "2 checks ran of 2 (complete): 2 passed, 0 failed, 0 errors, 0 skipped" in (
        capsys.readouterr().out
    )


def test_an_exact_item_id_selects_itself_despite_its_brackets(tmp_path):
    _, report = run_cli(tmp_path, "--select", ONE_ITEM)
    assert [result["id"] for result in report["results"]] == [ONE_ITEM]


@pytest.mark.parametrize(
    ("candidate", "status"), [("Raising", "error"), ("MutatesParameters", "failed")]
)
def test_a_failed_or_errored_check_exits_1(tmp_path, capsys, candidate, status):
    code, report = run_cli(tmp_path, "--candidate", f"{HOSTILE}:{candidate}", *TWO_ITEMS)
    assert code == 1
    assert report["complete"] is True
    assert report["results"][0]["status"] == status
    reproduction = report["results"][0]["reproduction"]
    assert reproduction["command"].endswith(f"--select '{ONE_ITEM}'")
    assert reproduction["problem"]["case"] == MLP
    assert f"{status.upper()} {ONE_ITEM}" in capsys.readouterr().out


def test_os_exit_under_isolate_is_one_error_and_the_run_completes(tmp_path):
    code, report = run_cli(
        tmp_path, "--candidate", f"{HOSTILE}:ExitingProcess", "--isolate", *TWO_ITEMS
    )
    assert code == 1
    assert report["complete"] is True and report["isolate"] is True
    assert [r["message"] for r in report["results"]] == [
        "the check's child process died (exit code 17) before it finished"
    ] * 2


def test_parity_checks_exist_and_skip_cleanly_without_cuda(tmp_path):
    code, report = run_cli(tmp_path, "--select", "parity/*")
    assert code == 0
    by_check = {}
    for result in report["results"]:
        by_check.setdefault(result["check_id"], set()).add((result["status"], result["message"]))
    assert set(by_check) == {"parity/cuda-cpu", "parity/float32-float64"}
    if torch.cuda.is_available():
        assert by_check["parity/cuda-cpu"] == {("passed", "")}
    else:
        assert by_check["parity/cuda-cpu"] == {("skipped", "CUDA is not available on this machine")}
    assert by_check["parity/float32-float64"] == {("passed", "")}


def test_unsupervised_a_candidate_that_kills_the_process_leaves_an_incomplete_report(tmp_path):
    candidate = f"{HOSTILE}:ExitingOnSecondCall"
    process, report_path = spawn(tmp_path, "--candidate", candidate, "--no-supervise", *TWO_ITEMS)
    process.communicate(timeout=120)
    assert process.returncode == hostile.EXIT_CODE
    report = json.loads(report_path.read_text())
    assert (report["complete"], report["state"]) == (False, "running")
    assert [r["id"] for r in report["results"]] == [ONE_ITEM]
    assert report["not_run"] == [f"side-effects/repeatable[{MLP}]"]
    assert report["summary"] == {
        "total": 2, "ran": 1, "passed": 1, "failed": 0, "error": 0, "skipped": 0,
        "xfailed": 0, "xpassed": 0, "not_run": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("sent", "timeout"),
    [(signal.SIGINT, "60"), (signal.SIGINT, "0"), (signal.SIGTERM, "60")],
    ids=["sigint-thread", "sigint-main-thread", "sigterm-thread"],
)
def test_a_signal_leaves_an_incomplete_report_and_exits_128_plus_n(tmp_path, sent, timeout):
    process, report_path = spawn(
        tmp_path, "--candidate", f"{HOSTILE}:Hanging", "--timeout", timeout, *TWO_ITEMS
    )
    deadline = time.monotonic() + 60
    while not report_path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report_path.exists(), process.communicate()[1]
    time.sleep(0.3)  # likely into the hanging call; before it, the report must say the same
    os.kill(process.pid, sent)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + sent
    report = json.loads(report_path.read_text())
    assert (report["complete"], report["state"], report["interruption"]) == (
        False,
        "interrupted",
        sent.name,
    )
    assert report["not_run"] == [ONE_ITEM, f"side-effects/repeatable[{MLP}]"]
    assert report["summary"]["ran"] == 0 and report["summary"]["not_run"] == 2
    assert f"0 checks ran of 2 (INCOMPLETE, {sent.name}: 2 not run)" in out
    assert f"interrupted by {sent.name}" in err
