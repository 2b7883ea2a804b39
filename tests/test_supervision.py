"""Supervision: whatever a candidate does, ``kfac-conformance run`` (default options) ends with
exit 1 and a complete report in which every planned item has a status.

Each hostile candidate runs through the CLI as a subprocess, on a handful of items
(``--select``) with a short ``--timeout``; the full quick profile is measured by hand in
docs/robustness.md. The other tests call the CLI's ``main`` in this process (the checks still
run in worker processes), which saves an interpreter start per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hostile
import pytest
from running import alive, quick_run_command
from suite_guard import SUITE_RAISED

from kfac_conformance.frontends.cli import main

HOSTILE = str(Path(hostile.__file__))
MLP = "mlp[tanh-ce-batch]"
SIDE_EFFECTS = f"side-effects/none[{MLP}]"
ITEMS = [  # in plan order, the order of the results
    "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
    f"structure/symmetric-psd[{MLP}]",
    SIDE_EFFECTS,
]
INVALID = "invalid result for layer '0', factor A: "
KILLED = "(the worker process was killed and replaced)"
SUBPROCESS_TIMEOUT_S = 120


def selected(items: list[str]) -> list[str]:
    return [argument for item in items for argument in ("--select", item)]


def run_subprocess(tmp_path: Path, candidate: str, *args: str, items=ITEMS) -> tuple[int, dict]:
    """``python -m kfac_conformance.frontends.cli run`` as a user starts it; its exit code and report."""
    report = tmp_path / "report.json"
    command = quick_run_command()
    command += ["--candidate", f"{HOSTILE}:{candidate}", "--report-json", str(report)]
    completed = subprocess.run(
        [*command, *args, *selected(items)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert report.exists(), completed.stderr
    return completed.returncode, json.loads(report.read_text())


def run_in_process(tmp_path: Path, candidate: str, *args: str, items=ITEMS) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    code = main(
        ["run", "--profile", "quick", "-q", "--candidate", f"{HOSTILE}:{candidate}"]
        + ["--report-json", str(report), *args, *selected(items)]
    )
    return code, json.loads(report.read_text())


def assert_complete(report: dict, items: list[str] = ITEMS) -> None:
    """Every planned item has a status, the report says the run is complete, and the suite's
    own code never raised."""
    assert (report["complete"], report["state"], report["not_run"]) == (True, "complete", [])
    raised = [r["id"] for r in report["results"] if r["message"].startswith(SUITE_RAISED)]
    assert raised == []
    assert [result["id"] for result in report["results"]] == items
    assert report["summary"]["ran"] == report["summary"]["total"] == len(items)


@pytest.mark.parametrize(
    ("candidate", "status", "message"),
    [
        ("Raising", "error", "the candidate raised ValueError: hostile refusal"),
        ("Hanging", "error", f"timed out after 1 s {KILLED}"),
        ("NaNFactor", "failed", INVALID + "has 1 NaN and 0 inf entries"),
        ("WrongShape", "failed", INVALID + "shape expected (5, 5), got (6, 6)"),
        ("NumpyFactor", "failed", INVALID + "expected a torch.Tensor, got ndarray"),
        ("ChangesDefaultDtype", "failed", "side effects: changed the default dtype to torch.float64"),
        ("ReseedsGlobalRNG", "failed", "side effects: used or changed the global RNG state"),
        ("ExitingProcess", "error", "the candidate ended the process: exit code 17"),
        ("Segfaulting", "error", "the candidate ended the process: killed by signal SIGSEGV"),
        ("LeavesMutatingThread", "failed", "side effects: modified parameters ['0.weight']"),
        ("MutatesData", "failed", "side effects: modified the data batches"),
    ],
)  # fmt: skip
def test_a_hostile_candidate_ends_with_exit_1_and_a_complete_report(
    tmp_path, candidate, status, message
):
    # one second is enough for a hang; the others get a limit no correct check comes near
    timeout = "1" if candidate == "Hanging" else "60"
    code, report = run_subprocess(tmp_path, candidate, "--timeout", timeout)
    assert code == 1
    assert_complete(report)
    assert report["execution"] == "worker"
    [result] = [result for result in report["results"] if result["id"] == SIDE_EFFECTS]
    assert (result["status"], result["message"].partition("\n")[0]) == (status, message)


def test_a_dead_worker_leaves_its_output_in_the_message(tmp_path):
    _, report = run_in_process(tmp_path, "Segfaulting", items=[SIDE_EFFECTS])
    message = report["results"][0]["message"]
    assert "last lines of the worker's output:" in message
    assert "Fatal Python error: Segmentation fault" in message
    assert 'tests/hostile.py", line' in message and "in misbehave" in message


def test_the_checks_after_a_crash_pass_in_a_fresh_worker(tmp_path):
    items = [f"structure/symmetric-psd[{case}]" for case in (MLP, "sequence[tanh-ce-per-position]")]
    items += [f"side-effects/none[{case}]" for case in ("deep-linear[mse-mean-3batches]", MLP)]
    code, report = run_in_process(tmp_path, "ExitingOnOneCase", items=items)
    assert code == 1
    assert_complete(report, items)
    died = "the candidate ended the process: exit code 17"
    assert [(r["status"], r["message"].partition("\n")[0]) for r in report["results"]] == [
        ("error", died),
        ("passed", ""),
        ("passed", ""),
        ("error", died),
    ]


def test_a_child_process_left_by_the_candidate_neither_hides_a_death_nor_outlives_it(
    tmp_path, monkeypatch
):
    """The child keeps the worker's pipe open: the death is seen on the process itself, and
    the child dies with the worker's process group."""
    monkeypatch.chdir(tmp_path)  # the worker's working directory, where the child's pid goes
    start = time.perf_counter()
    code, report = run_in_process(tmp_path, "ForksThenExits", items=[SIDE_EFFECTS])
    assert time.perf_counter() - start < 20  # the child sleeps 30 s
    assert code == 1
    message = report["results"][0]["message"]
    assert message == "the candidate ended the process: exit code 17"
    child = int((tmp_path / hostile.CHILD_PID_FILE).read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_worker_that_cannot_load_the_candidate_errors_each_check(tmp_path):
    code, report = run_in_process(tmp_path, "loads_only_in_the_main_process", items=ITEMS[:2])
    assert code == 1
    assert_complete(report, ITEMS[:2])
    assert [r["message"] for r in report["results"]] == [
        "the worker could not load the candidate: RuntimeError: no backend in a child process"
    ] * 2


def test_consecutive_timeouts_trip_the_circuit_breaker(tmp_path):
    items = [*ITEMS, f"side-effects/repeatable[{MLP}]"]
    start = time.perf_counter()
    code, report = run_in_process(tmp_path, "Hanging", "--timeout", "1", items=items)
    assert time.perf_counter() - start < 20  # one hang is 30 s
    assert code == 1
    assert_complete(report, items)
    reason = "the candidate timed out 3 times in a row"
    assert (report["stopped"], report["max_consecutive_timeouts"]) == (reason, 3)
    assert [r["message"] for r in report["results"]] == [f"timed out after 1 s {KILLED}"] * 3 + [
        f"not run: {reason}"
    ]


def test_maxfail_stops_the_run_and_the_rest_is_not_run(tmp_path):
    code, report = run_in_process(tmp_path, "Raising", "--maxfail", "1")
    assert code == 1
    assert_complete(report)
    assert (report["stopped"], report["maxfail"]) == ("--maxfail 1 reached", 1)
    assert [r["status"] for r in report["results"]] == ["error"] * 3
    assert [r["message"] for r in report["results"][1:]] == ["not run: --maxfail 1 reached"] * 2


def test_max_time_bounds_the_run_even_without_a_per_check_timeout(tmp_path):
    start = time.perf_counter()
    code, report = run_in_process(tmp_path, "Hanging", "--timeout", "0", "--max-time", "2")
    assert time.perf_counter() - start < 20
    assert code == 1
    assert_complete(report)
    reason = "the run reached --max-time 2 s"
    assert (report["stopped"], report["max_time_s"]) == (reason, 2.0)
    assert [r["message"] for r in report["results"]] == [f"{reason} {KILLED}"] + [
        f"not run: {reason}"
    ] * 2


def test_unsupervised_a_stray_thread_does_not_turn_exit_1_into_an_abort(tmp_path):
    code, report = run_subprocess(tmp_path, "LeavesMutatingThread", "--no-supervise")
    assert code == 1  # without the final os._exit: 134, "terminate called without an ..."
    assert_complete(report)
    assert report["execution"] == "in-process"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--maxfail", "0"], "--maxfail must be at least 1, got 0"),
        (["--max-time", "0"], "--max-time must be positive, got 0"),
        (["--max-consecutive-timeouts", "-1"], "--max-consecutive-timeouts must be at least 0"),
        (["--isolate", "--no-supervise"], "--isolate and --no-supervise exclude each other"),
    ],
)
def test_usage_errors_of_the_limits_exit_2(capsys, args, message):
    assert main(["run", "--candidate", "kfac_ref", "--profile", "quick", "-q", *args]) == 2
    assert message in capsys.readouterr().err


def test_pytest_plugin_relies_on_xdist_to_replace_a_crashed_worker(tmp_path):
    """The plugin runs checks in pytest's process; under ``-n`` pytest-xdist replaces a worker
    that dies and reports its item as failed (docs/robustness.md)."""
    pytest.importorskip("xdist")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "1"]
    command += ["--kfac-candidate", f"{HOSTILE}:ExitingOnOneCase", "--kfac-profile", "quick"]
    # the crash comes first; the second check needs the replacement worker
    command += ["-k", "(symmetric-psd and tanh-ce-batch) or (side-effects/none and 3batches)"]
    completed = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "COLUMNS": "200"},  # the summary line in full
    )
    assert completed.returncode == 1, completed.stdout
    assert f"FAILED ::{ITEMS[1]} - worker 'gw0' crashed" in completed.stdout
    assert "1 failed, 1 passed" in completed.stdout
