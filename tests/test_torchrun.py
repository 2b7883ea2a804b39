"""``kfac-conformance run --launcher torchrun`` under a real ``torchrun --standalone
--nproc-per-node 2`` (gloo, one node): kfac_ref passes, a data-parallel mutant fails, a
crashing rank errors and leaves no process behind; rank 0 alone writes the report and prints
the summary. Without torchrun, the launcher refuses to start, and a process that does not
report in time is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import hostile_distributed
import pytest
import torch.distributed as dist
from running import alive

from kfac_conformance.execution import distributed, torchrun
from kfac_conformance.execution.options import RunOptions
from kfac_conformance.frontends.cli import main

TESTS = Path(__file__).parent
MLP = "data-parallel-mlp[tanh-ce-mean-2batches]"
# what torchrun itself may take to start and stop two processes, beyond the items
_TORCHRUN_S = 120


def _torchrun(candidate: str, select: list[str], folder: Path) -> tuple[int, str, list[dict]]:
    """Exit code, standard output and results of two ranks run by torchrun in ``folder``;
    rank 0's report is complete (no process was stopped while it wrote)."""
    report = folder / "report.json"
    selection = [argument for pattern in select for argument in ("--select", pattern)]
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
        *("-m", "kfac_conformance.frontends.cli", "run", "--launcher", "torchrun"),
        *("--candidate", candidate, "--profile", "distributed", *selection),
        *("--report-json", str(report)),
    ]
    environment = {**os.environ, "PYTHONPATH": str(TESTS)}
    done = subprocess.run(
        command, cwd=folder, env=environment, capture_output=True, text=True, timeout=_TORCHRUN_S
    )
    written = json.loads(report.read_text())
    assert written["complete"], done.stderr[-3000:]
    return done.returncode, done.stdout, written["results"]


def test_the_reference_passes_under_torchrun_and_rank_0_alone_reports(tmp_path):
    code, stdout, results = _torchrun(
        "kfac_ref", [f"distributed/kfac[{MLP}]", f"distributed/mc-drawn-labels[{MLP}]"], tmp_path
    )
    assert [(result["status"], result["message"]) for result in results] == [("passed", "")] * 2
    assert all(result["observed"] <= result["tolerance"] for result in results)
    assert code == 0
    assert stdout.count("kfac_ref: 2 checks ran of 2 (complete)") == 1, stdout


def test_a_data_parallel_mutant_fails_under_torchrun(tmp_path):
    code, _, results = _torchrun(
        "zoo.distributed:ForgetsToReduceB", [f"distributed/kfac[{MLP}]"], tmp_path
    )
    (result,) = results
    assert result["status"] == "failed", result["message"]
    assert "rank 0 of W=2 equal shards [6, 6]" in result["message"]
    assert "B of this rank's shard alone" in result["diagnosis"]
    assert code == 1  # rank 0's: the other process exits 0 whatever its verdicts


def test_a_crashing_rank_under_torchrun_errors_and_leaves_no_process(tmp_path):
    hostile = f"{hostile_distributed.__file__}:CrashingRank"
    _, _, results = _torchrun(hostile, [f"distributed/kfac[{MLP}]"], tmp_path)
    (result,) = results
    assert result["status"] == "error"
    assert result["message"].startswith(
        f"rank 1 of 2 exited with code {hostile_distributed.EXIT_CODE} before answering"
    ), result["message"]
    pids = hostile_distributed.recorded_pids(tmp_path)
    assert len(pids) == 4  # two ranks, each with a grandchild
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


def test_a_process_that_does_not_report_is_named_and_lost_ranks_come_first():
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5))
    process = torchrun.TorchrunProcess(rank=0, world=2, host="127.0.0.1", port=store.port)
    outcomes = torchrun.exchange(process, "lonely", ("error", "rank 0 raised"), timeout_s=0.3)
    assert outcomes[0] == ("error", "rank 0 raised")
    assert outcomes[1] == (
        "lost",
        "the process of rank 1 of 2 had not reported after 0.3 s (it is stuck outside the "
        "candidate, or gone)",
    )
    with pytest.raises(distributed.ProcessGroupFailed) as raised:
        distributed._answers_of(outcomes)
    assert raised.value.message == outcomes[1][1]


def test_the_torchrun_launcher_outside_torchrun_is_refused_naming_what_is_missing(
    monkeypatch, capsys
):
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    arguments = ["run", "--launcher", "torchrun", "--candidate", "kfac_ref"]
    assert main([*arguments, "--profile", "distributed"]) == 2
    assert "this process lacks RANK, WORLD_SIZE" in capsys.readouterr().err
    assert main([*arguments, "--profile", "quick"]) == 2
    assert "give --profile distributed (got --profile quick)" in capsys.readouterr().err


def test_an_unknown_launcher_is_refused():
    with pytest.raises(ValueError, match="unknown launcher 'mpirun'"):
        RunOptions(launcher="mpirun")
