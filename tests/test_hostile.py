"""Hostile candidates never break a run: each misbehaviour becomes one precise result, and the
checks after it (and a correct candidate run afterwards in the same process) still pass."""

from __future__ import annotations

import threading
import time

import hostile
import pytest
import torch
from running import run_items
from suite_guard import suite_exceptions

from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.calling import CallAbandoned, abandon, call_candidate
from kfac_conformance.execution.plan import case_entries, plan

MLP = "mlp[tanh-ce-batch]"  # Linear(5, 4), Tanh, Linear(4, 3): layers '0' and '2'
ITEM_IDS = [
    f"structure/symmetric-psd[{MLP}]",
    "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
    f"side-effects/none[{MLP}]",
]
INVALID = "invalid result for layer '0', factor A: "


@pytest.fixture(scope="module")
def items():
    by_id = {item.id: item for item in plan("quick", case_entries("quick"), ITEM_IDS)}
    assert sorted(by_id) == sorted(ITEM_IDS)
    return [by_id[item_id] for item_id in ITEM_IDS]


def outcomes(candidate, items, **options) -> list[tuple[str, str]]:
    results = list(run_items(candidate, items, "quick", **options))
    assert suite_exceptions(results) == []
    return [(r.status, r.message) for r in results]


def assert_correct_candidate_still_passes(items) -> None:
    assert outcomes(hostile.Correct(), items, timeout=60) == [("passed", "")] * len(items)


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (hostile.NotAMapping, "invalid result: compute must return a mapping of layer name to KroneckerFactors, got list"),
        (hostile.MissingLayer, "invalid result: layers missing ['2'], unexpected [] (asked for ['0', '2'])"),
        (hostile.ExtraLayer, "invalid result: layers missing [], unexpected ['ghost'] (asked for ['0', '2'])"),
        (hostile.TupleFactors, "invalid result for layer '0': expected KroneckerFactors, got tuple"),
        (hostile.NumpyFactor, INVALID + "expected a torch.Tensor, got ndarray"),
        (hostile.WrongShape, INVALID + "shape expected (5, 5), got (6, 6)"),
        (hostile.NaNFactor, INVALID + "has 1 NaN and 0 inf entries"),
        (hostile.InfFactor, INVALID + "has 0 NaN and 2 inf entries"),
        (hostile.ComplexFactor, INVALID + "dtype torch.complex128 is not a real floating dtype"),
        (hostile.IntegerFactor, INVALID + "dtype torch.int64 is not a real floating dtype"),
        (hostile.WrongDevice, INVALID + "device expected cpu, got meta"),
    ],
)  # fmt: skip
def test_a_malformed_result_fails_its_check_with_a_precise_message(items, candidate, message):
    assert outcomes(candidate(times=1), items, timeout=60) == [
        ("failed", message),
        ("passed", ""),
        ("passed", ""),
    ]


HYGIENE_ITEMS = ["hygiene/*", "exactness/type-2-expand[deep-linear[mse-sum-1batch]]"]


def hygiene_outcomes(candidate) -> dict[str, object]:
    items = plan("default", case_entries("default"), HYGIENE_ITEMS)
    results = list(run_items(candidate(), items, "default"))
    assert suite_exceptions(results) == []
    return {result.check_id: result for result in results}


@pytest.mark.parametrize("candidate", [hostile.RequiresGrad, hostile.CarriesGraph])
def test_a_factor_that_carries_autograd_fails_hygiene_only(candidate):
    results = hygiene_outcomes(candidate)
    detached = results["hygiene/detached"]
    assert detached.status == "failed"
    assert detached.message.endswith(
        "layer '0', factor A: requires grad or carries an autograd graph; detach it"
    )
    assert results["hygiene/problem-dtype"].status == "passed"
    exactness = results["exactness/type-2-expand"]
    assert exactness.status == "passed"
    assert exactness.message == (
        "note: the candidate's results were repaired (see hygiene/*): "
        "requires grad or carries an autograd graph; detach it"
    )


def test_a_factor_in_another_dtype_fails_hygiene_and_is_judged_on_its_values():
    results = hygiene_outcomes(hostile.WrongDtype)
    dtype = results["hygiene/problem-dtype"]
    assert dtype.status == "failed"
    assert dtype.message.endswith(
        "float64: layer '0', factor A: dtype torch.float32, not the problem's torch.float64; "
        "return the problem's dtype"
    )
    assert results["hygiene/detached"].status == "passed"
    # its A was cast to float32 and back: the values really lost precision
    exactness = results["exactness/type-2-expand"]
    assert exactness.status == "failed"
    assert "float32 round-off level" in exactness.diagnosis


@pytest.mark.parametrize(
    ("candidate", "exception"),
    [(hostile.Raising, "ValueError: hostile refusal"), (hostile.SysExiting, "SystemExit: 3")],
)
def test_an_exception_is_an_error_with_type_message_and_traceback(items, candidate, exception):
    (status, message), *rest = outcomes(candidate(times=1), items, timeout=60)
    assert status == "error"
    assert message.startswith(f"the candidate raised {exception}\n")
    assert 'tests/hostile.py", line' in message and "in misbehave" in message
    assert message.endswith(f"{exception}\n")
    assert (
        "conformance/execution/calling.py" not in message
    )  # the candidate's frames, not the harness's
    assert rest == [("passed", ""), ("passed", "")]


def test_an_exception_after_a_side_effect_reports_both(items):
    [(status, message)] = outcomes(hostile.MutatesThenRaises(), items[:1], timeout=60)
    assert status == "error"
    assert message.startswith("the candidate raised RuntimeError: hostile failure after a mutation")
    assert message.endswith(
        "\nnote: the candidate had side effects (restored): modified parameters ['0.weight']"
    )


@pytest.mark.parametrize(
    ("candidate", "effect"),
    [
        (hostile.MutatesParameters, "modified parameters ['0.weight']"),
        (hostile.LeavesHook, "left hooks on ['0._forward_hooks']"),
        (hostile.ChangesDefaultDtype, "changed the default dtype to torch.float64"),
        (hostile.UsesGlobalRNG, "used or changed the global RNG state"),
        (hostile.LeavesGradModeOff, "left grad mode off"),
        (hostile.LeavesEvalMode, "changed train/eval mode of ['<model>', '0', '1', '2']"),
        (hostile.MutatesData, "modified the data batches"),
    ],
)
@pytest.mark.parametrize("timeout", [None, 60], ids=["main-thread", "worker-thread"])
def test_a_side_effect_fails_only_side_effects_none_and_is_restored(
    items, candidate, effect, timeout
):
    rng_before, dtype_before = torch.get_rng_state(), torch.get_default_dtype()
    note = f"note: the candidate had side effects (restored): {effect}"
    assert outcomes(candidate(), items, timeout=timeout) == [
        ("passed", note),
        ("passed", note),
        ("failed", f"side effects: {effect}"),
    ]
    assert torch.get_default_dtype() == dtype_before
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.is_grad_enabled()
    assert_correct_candidate_still_passes(items)


def test_a_hang_times_out_and_the_rest_of_the_run_goes_on(items):
    # The limit must leave the correct checks after the hang ample time: they then run in
    # forked children, which take about a second on a loaded 2-core machine.
    start = time.perf_counter()
    results = outcomes(hostile.Hanging(times=1), items, timeout=5)
    assert time.perf_counter() - start < 25  # the hang itself is 30 s
    assert results == [
        (
            "error",
            "timed out after 5 s (the call was abandoned in a background thread; "
            "later checks run in child processes)",
        ),
        ("passed", ""),
        ("passed", ""),
    ]
    assert_correct_candidate_still_passes(items)


def test_a_candidate_that_always_hangs_costs_one_limit_per_check(items):
    start = time.perf_counter()
    results = outcomes(hostile.Hanging(), items[:2], timeout=1)
    assert time.perf_counter() - start < 20
    assert [status for status, _ in results] == ["error", "error"]
    assert results[0][1].startswith("timed out after 1 s (the call was abandoned")
    assert results[1][1] == "timed out after 1 s (the child process was killed)"


def test_os_exit_under_isolation_costs_only_its_check(items):
    expected = "the check's child process died (exit code 17) before it finished"
    assert outcomes(hostile.ExitingProcess(), items[:2], timeout=60, isolate=True) == [
        ("error", expected),
        ("error", expected),
    ]
    assert_correct_candidate_still_passes(items)


def test_isolation_without_a_timeout_runs_every_check(items):
    assert outcomes(hostile.Correct(), items[:1], isolate=True) == [("passed", "")]


def test_an_abandoned_call_leaves_global_state_alone(items):
    """A late restore from a timed-out thread would clobber whatever runs by then."""
    release = threading.Event()

    class Blocking(hostile.Hostile):
        def misbehave(self, problem, request):
            release.wait(30)
            return hostile.reference(problem, request)

    problem = items[0].entry.make_problem()
    raised = []

    def call() -> None:
        try:
            call_candidate(Blocking(), problem, Request())
        except CallAbandoned as abandoned:
            raised.append(abandoned)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    abandon(worker)
    torch.manual_seed(1234)  # what runs next moves the global RNG
    state = torch.get_rng_state()
    release.set()
    worker.join(30)
    assert not worker.is_alive()
    assert len(raised) == 1
    assert torch.equal(torch.get_rng_state(), state)


def test_negative_timeout_is_rejected(items):
    with pytest.raises(ValueError, match="timeout must be positive"):
        list(run_items(hostile.Correct(), items, timeout=-1))
