"""Each entry of the watched-state tables alone: it sees nothing on untouched state, sees one
change with its exact message, and its restore puts the state back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfac_conformance.contract.problem import Problem
from kfac_conformance.execution import watched_problem as problem_state
from kfac_conformance.execution import watched_state as global_state
from kfac_conformance.execution.watched_state import GlobalState


@pytest.fixture(autouse=True)
def untouched_global_state():
    """Whatever a test does to global state, the next one starts from the same."""
    state = GlobalState.take()
    yield
    state.restore_and_report()


def make_problem() -> Problem:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model.register_buffer("scale", torch.ones(2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["0", "2"], case_id="watched")


def assert_seen_worded_and_restored(entry, subject, change_state, message) -> None:
    saved = entry.take(subject)
    assert entry.compare(subject, saved) is None
    change_state()
    change = entry.compare(subject, saved)
    assert change is not None
    assert entry.message(change) == message
    entry.restore(subject, saved, change)
    assert entry.compare(subject, saved) is None


def _add_global_hook() -> None:
    nn.modules.module.register_module_forward_hook(lambda module, inputs, output: None)


@pytest.mark.parametrize(
    ("entry", "change_state", "message"),
    [
        (
            global_state.DEFAULT_DTYPE,
            lambda: torch.set_default_dtype(torch.float64),
            "changed the default dtype to torch.float64",
        ),
        (global_state.RNG, lambda: torch.rand(1), "used or changed the global RNG state"),
        (global_state.GRAD_MODE, lambda: torch.set_grad_enabled(False), "left grad mode off"),
        (
            global_state.ANOMALY_DETECTION,
            lambda: torch.set_anomaly_enabled(True),
            "left anomaly detection on",
        ),
        (
            global_state.DETERMINISTIC_ALGORITHMS,
            lambda: torch.use_deterministic_algorithms(True),
            "changed torch.use_deterministic_algorithms",
        ),
        (
            global_state.GLOBAL_MODULE_HOOKS,
            _add_global_hook,
            "left global module hooks ['_global_forward_hooks']",
        ),
    ],
    ids=["default-dtype", "rng", "grad-mode", "anomaly", "deterministic", "global-hooks"],
)
def test_a_global_entry(entry, change_state, message):
    assert_seen_worded_and_restored(entry, None, change_state, message)


def test_the_global_entries_restore_the_values_themselves():
    rng = torch.get_rng_state()
    torch.set_default_dtype(torch.float32)
    state = GlobalState.take()
    torch.rand(3)
    torch.set_default_dtype(torch.float64)
    assert state.restore_and_report() == [
        "changed the default dtype to torch.float64",
        "used or changed the global RNG state",
    ]  # in table order, whatever order the changes were made in
    assert torch.get_default_dtype() == torch.float32
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="needs a process where CUDA is unused")
def test_the_cuda_rng_is_not_read_before_cuda_is_in_use():
    entry = global_state.CUDA_RNG
    saved = entry.take(None)
    assert saved is None and entry.compare(None, saved) is None
    assert not torch.cuda.is_initialized()  # watching it did not initialise CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_rng_once_cuda_is_in_use():
    torch.cuda.init()
    changes = lambda: torch.rand(1, device="cuda")  # noqa: E731
    message = "used or changed the global CUDA RNG state"
    assert_seen_worded_and_restored(global_state.CUDA_RNG, None, changes, message)


def _modify(tensor: torch.Tensor) -> None:
    with torch.no_grad():
        tensor.add_(1.0)


PROBLEM_ENTRIES = {
    "parameter-values": (
        problem_state.PARAMETER_VALUES,
        lambda p: _modify(p.model[0].weight),
        "modified parameters ['0.weight']",
    ),
    "parameter-dtype": (
        problem_state.PARAMETER_VALUES,
        lambda p: setattr(p.model[2].bias, "data", p.model[2].bias.data.float()),
        "modified parameters ['2.bias']",
    ),
    "gradients": (
        problem_state.GRADIENTS,
        lambda p: setattr(p.model[0].bias, "grad", torch.ones_like(p.model[0].bias)),
        "changed .grad of ['0.bias']",
    ),
    "requires-grad": (
        problem_state.REQUIRES_GRAD,
        lambda p: p.model[2].weight.requires_grad_(False),
        "changed requires_grad of ['2.weight']",
    ),
    "tensor-hooks": (
        problem_state.TENSOR_HOOKS,
        lambda p: p.model[0].weight.register_hook(lambda grad: grad),
        "left tensor hooks on parameters ['0.weight']",
    ),
    "buffers": (
        problem_state.BUFFERS,
        lambda p: _modify(p.model.scale),
        "modified buffers ['scale']",
    ),
    "module-hooks": (
        problem_state.MODULE_HOOKS,
        lambda p: (
            p.model.register_forward_pre_hook(lambda module, inputs: None),
            p.model[2].register_forward_hook(lambda module, inputs, output: None),
        ),
        "left hooks on ['<model>._forward_pre_hooks', '2._forward_hooks']",
    ),
    "training-mode": (
        problem_state.TRAINING_MODE,
        lambda p: p.model[1].eval(),
        "changed train/eval mode of ['1']",
    ),
    "data-values": (
        problem_state.DATA_BATCHES,
        lambda p: _modify(p.batches[0][1]),
        "modified the data batches",
    ),
    "data-count": (
        problem_state.DATA_BATCHES,
        lambda p: p.batches.append(p.batches[0]),
        "modified the data batches",
    ),
    "loss-reduction": (
        problem_state.LOSS_REDUCTION,
        lambda p: setattr(p.loss_func, "reduction", "sum"),
        "changed the loss reduction to 'sum'",
    ),
}


@pytest.mark.parametrize("kind", PROBLEM_ENTRIES)
def test_a_problem_entry(kind):
    entry, change_state, message = PROBLEM_ENTRIES[kind]
    problem = make_problem()
    assert_seen_worded_and_restored(entry, problem, lambda: change_state(problem), message)


def test_a_restored_problem_equals_a_fresh_one():
    problem, fresh = make_problem(), make_problem()
    snapshot = problem_state.watch_problem(problem)
    for kind in ("parameter-values", "parameter-dtype", "buffers", "data-values"):
        PROBLEM_ENTRIES[kind][1](problem)
    problem.model.eval()
    assert snapshot.restore_and_report() == [
        "modified parameters ['0.weight', '2.bias']",
        "modified buffers ['scale']",
        "changed train/eval mode of ['<model>', '0', '1', '2']",
        "modified the data batches",
    ]
    for (name, now), before in zip(
        problem.model.state_dict().items(), fresh.model.state_dict().values(), strict=True
    ):
        assert now.dtype == before.dtype and torch.equal(now, before), name
    assert all(module.training for module in problem.model.modules())
    assert torch.equal(problem.batches[0][1], fresh.batches[0][1])


def test_an_added_parameter_is_reported_and_left_in_place():
    """Where an added parameter belongs cannot be told, so it is reported, not removed."""
    problem = make_problem()
    entry = problem_state.PARAMETER_NAMES
    saved = entry.take(problem)
    assert entry.compare(problem, saved) is None
    problem.model.register_parameter("extra", nn.Parameter(torch.zeros(1)))
    change = entry.compare(problem, saved)
    assert entry.message(change) == "added or removed parameters"
    entry.restore(problem, saved, change)
    assert "extra" in dict(problem.model.named_parameters())


def test_a_gradient_on_an_added_parameter_is_reported():
    problem = make_problem()
    entry = problem_state.GRADIENTS
    saved = entry.take(problem)
    extra = nn.Parameter(torch.zeros(1))
    extra.grad = torch.ones(1)
    problem.model.register_parameter("extra", extra)
    change = entry.compare(problem, saved)
    assert entry.message(change) == "changed .grad of ['extra']"
    entry.restore(problem, saved, change)  # only what the snapshot had is put back
    assert torch.equal(extra.grad, torch.ones(1))
