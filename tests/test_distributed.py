"""The distributed/* family: kfac_ref passes it with W = 2 and 4 ranks, each data-parallel
mutant fails it, a candidate without the claim is skipped, and a rank that crashes or hangs
ends its item with an error and leaves no process behind (inline and supervised)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hostile_distributed
import pytest
from hostile_distributed import CrashingRank, HangingRank, recorded_pids
from running import alive, inline
from zoo import DISTRIBUTED_MUTANTS, Mutant
from zoo.distributed import AveragesRankFactors

from kfac_conformance.checks import distributed
from kfac_conformance.checks.base import DISTRIBUTED_CLAIM, CheckSkipped
from kfac_conformance.contract.expected_failures import glob_matches
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution import distributed as launcher
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.frontends.cli import main
from kfac_conformance.reference_candidate import ReferenceCandidate

PROFILE = "distributed"
PLAN = plan(PROFILE, case_entries(PROFILE))
MLP = "data-parallel-mlp[tanh-ce-mean-2batches]"
MLP_ITEM = f"distributed/kfac[{MLP}]"
HOSTILE = str(Path(hostile_distributed.__file__))


def _items(glob: str):
    return [item for item in PLAN if glob_matches(glob, item.id)]


def _messages(results) -> list[str]:
    return [f"{result.item_id}: {result.status} {result.message[:300]}" for result in results]


def test_the_family_runs_only_in_its_opt_in_profile():
    assert {item.check.family for item in PLAN} == {"distributed"}
    assert len(PLAN) == len(distributed.CHECKS) * len(distributed.CASES) == 9
    for profile in ("quick", "default", "thorough"):
        families = {item.check.family for item in plan(profile, case_entries(profile))}
        assert "distributed" not in families


@pytest.mark.parametrize(
    ("data_world_layout", "sizes"),
    [
        ((12, 2, "equal"), [6, 6]),
        ((12, 2, "unequal"), [1, 11]),
        ((12, 4, "equal"), [3, 3, 3, 3]),
        ((12, 4, "unequal"), [1, 1, 1, 9]),
        ((14, 4, "equal"), [4, 4, 3, 3]),
    ],
)
def test_shard_sizes(data_world_layout, sizes):
    assert distributed.shard_sizes(*data_world_layout) == sizes


def test_too_few_data_for_unequal_shards_is_refused_naming_them():
    with pytest.raises(ValueError, match="7 data are too few for unequal shards over 4 ranks"):
        distributed.shard_sizes(7, 4, "unequal")


def test_the_reference_passes_every_item_with_two_and_four_ranks():
    results = list(run_items(ReferenceCandidate(), PLAN, inline(PROFILE)))
    assert [result.status for result in results] == ["passed"] * len(PLAN), _messages(results)
    assert all(result.observed <= result.tolerance for result in results)


def test_a_candidate_without_the_claim_is_skipped_naming_it():
    results = list(run_items(Mutant(), PLAN, inline(PROFILE)))
    assert {(result.status, result.message) for result in results} == {
        ("skipped", f"not supported: {DISTRIBUTED_CLAIM}")
    }


@pytest.mark.parametrize("mutant", DISTRIBUTED_MUTANTS, ids=lambda mutant: mutant.__name__)
def test_each_data_parallel_mutant_fails(mutant: type[Mutant]):
    # its killers on one case (every case kills it): process groups cost seconds
    killers = [item for item in PLAN if item.entry.id == MLP and item.check.id in mutant.killers]
    results = list(run_items(mutant(), killers, inline(PROFILE)))
    assert [result.status for result in results] == ["failed"] * len(killers), _messages(results)
    assert mutant.diagnosis in results[0].diagnosis


def test_averaged_factors_are_caught_only_by_unequal_shards():
    """Averaging is right for equal shards of a mean loss: the first layout that fails it is
    W = 2 with unequal shards."""
    (result,) = run_items(AveragesRankFactors(), _items(MLP_ITEM), inline(PROFILE))
    assert "rank 0 of W=2 unequal shards [1, 11]" in result.message


def test_a_problem_off_the_cpu_is_skipped_naming_its_device():
    pieces = distributed.shards(distributed.CASES[0].make_problem().to("meta"), [6, 6])
    with pytest.raises(CheckSkipped, match="CPU problems only .* not meta; on GPUs"):
        launcher.run_in_process_group(ReferenceCandidate(), pieces, [Request()])


def _assert_none_survives(folder: Path) -> None:
    pids = recorded_pids(folder)
    assert len(pids) == 4  # two ranks, each with a grandchild
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


def test_a_crashing_rank_ends_the_item_with_an_error_and_no_survivor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    (result,) = run_items(CrashingRank(), _items(MLP_ITEM), inline(PROFILE))
    assert time.perf_counter() - start < launcher.PROCESS_GROUP_TIMEOUT_S
    assert result.status == "error"
    assert result.message.startswith(
        f"rank 1 of 2 exited with code {hostile_distributed.EXIT_CODE} before answering "
        "(a crash); every rank was killed"
    )
    _assert_none_survives(tmp_path)


def test_a_rank_hanging_ends_the_item_at_the_deadline_with_no_survivor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(launcher, "PROCESS_GROUP_TIMEOUT_S", 3.0)
    (result,) = run_items(HangingRank(), _items(MLP_ITEM), inline(PROFILE))
    assert result.status == "error"
    assert "had not answered after 3 s (a hang" in result.message, result.message
    _assert_none_survives(tmp_path)


def test_a_supervised_worker_killed_for_its_timeout_takes_the_ranks_with_it(tmp_path, monkeypatch):
    """The ranks sit in their own process group, out of reach of the worker's: they kill
    themselves when the worker that started them dies."""
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "report.json"
    arguments = ["run", "--profile", PROFILE, "-q", "--candidate", f"{HOSTILE}:HangingRank"]
    code = main([*arguments, "--timeout", "8", "--select", MLP_ITEM, "--report-json", str(report)])
    (result,) = json.loads(report.read_text())["results"]
    assert (code, result["status"]) == (1, "error"), result["message"]
    assert "timed out" in result["message"] or "timeout" in result["message"], result["message"]
    _assert_none_survives(tmp_path)
