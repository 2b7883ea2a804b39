"""RunOptions are checked when made; every execution mode gives the same results, and every
mode that can stop an item stops a hanging one."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import hostile
import pytest
import torch
from conftest import FAILING_CANDIDATE, FAILING_SELECT
from zoo.sharing import ConvPatchesIgnoreGeometry

from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.execution.executors import ChildExecutor, InlineExecutor, ThreadExecutor
from kfac_conformance.execution.limits import RunLimits
from kfac_conformance.execution.options import DEFAULT_TIMEOUT_S, RunOptions, Specs
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.runner import open_executor, run_items
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.supervisor import Supervisor
from kfac_conformance.execution.watched_state import GlobalState

HOSTILE = str(Path(hostile.__file__))
MLP_ITEMS = [
    "structure/symmetric-psd[mlp[tanh-ce-batch]]",
    "side-effects/none[mlp[tanh-ce-batch]]",
]


def quick_items(*select: str):
    items = plan("quick", case_entries("quick"), select)
    assert items, select
    return items


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"profile": "nope"}, ValueError, "unknown profile 'nope'; choose one of"),
        ({"device": "gpu"}, ValueError, "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ({"mode": "isolate"}, ValueError, "unknown mode 'isolate'; choose one of"),
        ({"timeout_s": -1}, ValueError, "timeout must be positive and finite"),
        ({"timeout_s": 0}, ValueError, "got timeout_s=0"),
        ({"timeout_s": float("inf")}, ValueError, "got timeout_s=inf"),
        ({"timeout_s": "5"}, TypeError, "timeout_s must be a number of seconds or None"),
        ({"mode": "inline"}, ValueError, "mode 'inline' runs each item in the calling thread"),
        ({"threads": 0}, ValueError, "threads must be an integer of at least 1, got 0"),
        ({"limits": 3}, TypeError, "limits must be a RunLimits, got int"),
        ({"expected": ["exactness/*"]}, TypeError, "expected must hold ExpectedFailure entries"),
        ({"reproduce": "yes"}, TypeError, "reproduce must be callable or None, got str"),
        ({"progress": 1}, TypeError, "progress must be callable or None, got int"),
        ({"mode": "child", "device": "cuda"}, ValueError, "mode 'child' forks"),
    ],
)
def test_bad_run_options_are_rejected_with_a_clear_error(fields, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        RunOptions(**fields)


def test_run_options_are_keyword_only_frozen_and_default_to_the_command_line():
    with pytest.raises(TypeError):
        RunOptions("quick")  # type: ignore[misc]
    options = RunOptions(expected=[ExpectedFailure("exactness/*", "known", 1)])
    assert isinstance(options.expected, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "inline"  # type: ignore[misc]
    assert (options.profile, options.device, options.mode) == ("default", "cpu", "supervised")
    assert (options.timeout_s, options.limits, options.threads) == (300.0, RunLimits(), 1)
    assert DEFAULT_TIMEOUT_S == 300.0
    assert options.execution == "worker"
    assert RunOptions(mode="child").execution == "isolate"
    assert RunOptions(mode="inline", timeout_s=None).execution == "in-process"


def test_run_items_takes_run_options_and_supervision_needs_specs():
    items = quick_items(MLP_ITEMS[0])
    with pytest.raises(TypeError, match="run_items takes RunOptions, got str 'quick'"):
        run_items(hostile.Correct(), items, "quick")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode 'supervised' rebuilds the candidate"):
        run_items(hostile.Correct(), items, RunOptions(profile="quick"))


def test_the_factory_picks_one_executor_per_mode():
    session, baseline = Session(hostile.Correct(), PROFILES["quick"]), GlobalState.take()
    expected = {
        "inline": InlineExecutor,
        "thread": ThreadExecutor,
        "child": ChildExecutor,
        "supervised": Supervisor,
    }
    for mode, kind in expected.items():
        options = RunOptions(mode=mode, timeout_s=None if mode == "inline" else 60)
        executor = open_executor(options, session, baseline, Specs("kfac_ref"))
        try:
            assert type(executor) is kind, mode
        finally:
            executor.close()


MODES = {
    "inline": RunOptions(profile="quick", mode="inline", timeout_s=None),
    "thread": RunOptions(profile="quick", mode="thread", timeout_s=120),
    "child": RunOptions(profile="quick", mode="child", timeout_s=120),
    "supervised": RunOptions(profile="quick", mode="supervised", timeout_s=120),
}


def test_every_mode_gives_the_same_results():
    """Two failures (one with a diagnosis) and a pass, each field equal whatever the mode."""
    items = quick_items(FAILING_SELECT)
    outcomes = {}
    for mode, options in MODES.items():
        run = run_items(ConvPatchesIgnoreGeometry(), items, options, Specs(FAILING_CANDIDATE))
        outcomes[mode] = [
            (r.item_id, r.status, r.message, r.observed, r.tolerance, r.diagnosis) for r in run
        ]
    statuses = [status for _, status, *_ in outcomes["inline"]]
    assert sorted(statuses) == ["failed", "failed", "passed"]
    assert any(diagnosis for *_, diagnosis in outcomes["inline"])  # compared below, too
    for mode, results in outcomes.items():
        assert results == outcomes["inline"], mode


@pytest.mark.parametrize(
    ("mode", "consequence"),
    [
        (
            "thread",
            "the call was abandoned in a background thread; later checks run in child processes",
        ),
        ("child", "the child process was killed"),
        ("supervised", "the worker process was killed and replaced"),
    ],
)
def test_a_hanging_candidate_times_out(mode, consequence):
    options = RunOptions(profile="quick", mode=mode, timeout_s=1)
    start = time.perf_counter()
    run = run_items(
        hostile.Hanging(), quick_items(MLP_ITEMS[0]), options, Specs(f"{HOSTILE}:Hanging")
    )
    [result] = run
    assert time.perf_counter() - start < 20  # the hang itself is 30 s
    assert (result.status, result.message) == ("error", f"timed out after 1 s ({consequence})")


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA keeps a timed-out run in threads")
def test_after_an_abandoned_thread_the_thread_executor_runs_children():
    session, baseline = Session(hostile.Hanging(), PROFILES["quick"]), GlobalState.take()
    executor = ThreadExecutor(session, baseline)
    first, second = quick_items(*MLP_ITEMS)
    try:
        assert executor.run(first, 1).consequence.endswith("later checks run in child processes")
        assert executor.run(second, 1).consequence == "the child process was killed"
    finally:
        executor.close()
        baseline.restore_and_report()


def test_without_a_limit_the_thread_executor_runs_in_the_calling_thread():
    callers = []

    class Recording(hostile.Correct):
        def compute(self, problem, request):
            callers.append(threading.current_thread())
            return super().compute(problem, request)

    session, baseline = Session(Recording(), PROFILES["quick"]), GlobalState.take()
    result = ThreadExecutor(session, baseline).run(quick_items(MLP_ITEMS[0])[0], None)
    assert result.status == "passed"
    assert callers and set(callers) == {threading.current_thread()}
