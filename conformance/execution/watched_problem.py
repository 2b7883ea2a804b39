"""The state of one problem a candidate call can change: its model (parameters, their
gradients, flags and hooks, buffers, module hooks, train/eval modes), its data and its loss.

:data:`PROBLEM_STATE` is the table of entries (see :class:`~kfac_conformance.execution.
watched_state.Watched`), in the order their messages come; the subject is the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kfac_conformance.contract.problem import Problem
from kfac_conformance.execution.watched_state import Snapshot, Watched

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def same_tensor(now: Tensor, before: Tensor) -> bool:
    return (
        now.dtype == before.dtype
        and now.device == before.device
        and now.shape == before.shape
        and torch.equal(now.detach(), before)
    )


def _same_grad(now: Tensor | None, before: Tensor | None) -> bool:
    if now is None or before is None:
        return now is None and before is None
    return same_tensor(now, before)


def restore_tensor(tensor: Tensor, saved: Tensor) -> None:
    """Put ``saved`` back into ``tensor`` in place, even if its dtype, device or shape changed."""
    if (
        tensor.dtype == saved.dtype
        and tensor.device == saved.device
        and tensor.shape == saved.shape
    ):
        tensor.copy_(saved)
    else:
        tensor.data = saved.clone()


def _parameters(problem: Problem) -> dict[str, Tensor]:
    return dict(problem.model.named_parameters())


def _buffers(problem: Problem) -> dict[str, Tensor]:
    return dict(problem.model.named_buffers())


def _clone(tensor: Tensor) -> Tensor:
    return tensor.detach().clone()


def _clone_grad(parameter: Tensor) -> Tensor | None:
    return None if parameter.grad is None else _clone(parameter.grad)


def _set_grad(parameter: Tensor, grad: Tensor | None) -> None:
    parameter.grad = grad


def tensor_hook_keys(tensor: Tensor) -> list:
    keys = list(tensor._backward_hooks or {})
    keys += list(getattr(tensor, "_post_accumulate_grad_hooks", None) or {})
    return keys


def _remove_tensor_hooks(tensor: Tensor, keep: list) -> None:
    for hooks in (tensor._backward_hooks, getattr(tensor, "_post_accumulate_grad_hooks", None)):
        for key in [key for key in list(hooks or {}) if key not in keep]:
            del hooks[key]


class ParameterNames:
    """Which parameters the model has. A change is reported, not undone: where an added
    parameter belongs, or a removed one went, cannot be told."""

    def take(self, problem: Problem) -> set[str]:
        return set(_parameters(problem))

    def compare(self, problem: Problem, saved: set[str]) -> bool | None:
        return True if set(_parameters(problem)) != saved else None

    def restore(self, problem: Problem, saved: set[str], change: bool) -> None:
        pass

    def message(self, change: bool) -> str:
        return "added or removed parameters"


@dataclass(frozen=True)
class TensorProperty:
    """One property of each named tensor of the model; the change is the names whose
    property changed. A tensor added since the snapshot is compared (with ``None``) only
    under ``compare_added``; only tensors in the snapshot are restored."""

    tensors: Callable[[Problem], dict[str, Tensor]]
    take_one: Callable[[Tensor], Any]
    unchanged: Callable[[Tensor, Any], bool]
    put_back: Callable[[Tensor, Any], object]
    describe: str  # formatted with the list of changed names
    compare_added: bool = False

    def take(self, problem: Problem) -> dict[str, Any]:
        return {name: self.take_one(tensor) for name, tensor in self.tensors(problem).items()}

    def compare(self, problem: Problem, saved: dict[str, Any]) -> list[str] | None:
        changed = [
            name
            for name, tensor in self.tensors(problem).items()
            if (name in saved or self.compare_added) and not self.unchanged(tensor, saved.get(name))
        ]
        return changed or None

    def restore(self, problem: Problem, saved: dict[str, Any], change: list[str]) -> None:
        tensors = self.tensors(problem)
        with torch.no_grad():
            for name in change:
                if name in saved:
                    self.put_back(tensors[name], saved[name])

    def message(self, change: list[str]) -> str:
        return self.describe.format(change)


class ModuleHooks:
    """Hooks registered on the model's modules; the change lists, per hook dict with extra
    keys, ``(module name, dict name, the dict, its extra keys)``."""

    def take(self, problem: Problem) -> dict[str, dict[str, list]]:
        return {
            name: {hooks: list(getattr(module, hooks, None) or {}) for hooks in HOOK_DICTS}
            for name, module in problem.model.named_modules()
        }

    def compare(self, problem: Problem, saved: dict[str, dict[str, list]]) -> list[tuple] | None:
        left = []
        for name, module in problem.model.named_modules():
            for hooks in HOOK_DICTS:
                registered = getattr(module, hooks, None) or {}
                before = saved.get(name, {}).get(hooks, [])
                extra = [key for key in list(registered) if key not in before]
                if extra:
                    left.append((name, hooks, registered, extra))
        return left or None

    def restore(self, problem: Problem, saved: object, change: list[tuple]) -> None:
        for _, _, registered, keys in change:
            for key in keys:
                del registered[key]

    def message(self, change: list[tuple]) -> str:
        return f"left hooks on {[f'{_module_name(name)}.{hooks}' for name, hooks, _, _ in change]}"


def _module_name(name: str) -> str:
    return name or "<model>"


class TrainingMode:
    """The train/eval flag of every module; the change lists the modules that flipped."""

    def take(self, problem: Problem) -> dict[str, bool]:
        return {name: module.training for name, module in problem.model.named_modules()}

    def compare(self, problem: Problem, saved: dict[str, bool]) -> list[str] | None:
        flipped = [
            name
            for name, module in problem.model.named_modules()
            if module.training != saved.get(name, module.training)
        ]
        return flipped or None

    def restore(self, problem: Problem, saved: dict[str, bool], change: list[str]) -> None:
        for name, module in problem.model.named_modules():
            module.training = saved.get(name, module.training)

    def message(self, change: list[str]) -> str:
        return f"changed train/eval mode of {[_module_name(name) for name in change]}"


class DataBatches:
    """The problem's data batches (inputs and targets)."""

    def take(self, problem: Problem) -> list[tuple[Tensor, Tensor]]:
        return [(_clone(X), _clone(y)) for X, y in problem.batches]

    def compare(self, problem: Problem, saved: list[tuple[Tensor, Tensor]]) -> bool | None:
        changed = len(problem.batches) != len(saved) or any(
            not (same_tensor(X, X0) and same_tensor(y, y0))
            for (X, y), (X0, y0) in zip(problem.batches, saved, strict=True)
        )
        return True if changed else None

    def restore(self, problem: Problem, saved: list[tuple[Tensor, Tensor]], change: bool) -> None:
        problem.batches = [(X.clone(), y.clone()) for X, y in saved]

    def message(self, change: bool) -> str:
        return "modified the data batches"


class LossReduction:
    """The loss function's ``reduction``; the change is the new one."""

    def take(self, problem: Problem) -> str:
        return problem.loss_func.reduction

    def compare(self, problem: Problem, saved: str) -> str | None:
        now = problem.loss_func.reduction
        return None if now == saved else now

    def restore(self, problem: Problem, saved: str, change: str) -> None:
        problem.loss_func.reduction = saved

    def message(self, change: str) -> str:
        return f"changed the loss reduction to {change!r}"


PARAMETER_NAMES = ParameterNames()
PARAMETER_VALUES = TensorProperty(
    _parameters, _clone, same_tensor, restore_tensor, "modified parameters {}"
)
GRADIENTS = TensorProperty(
    _parameters,
    _clone_grad,
    lambda parameter, grad: _same_grad(parameter.grad, grad),
    _set_grad,
    "changed .grad of {}",
    compare_added=True,
)
REQUIRES_GRAD = TensorProperty(
    _parameters,
    lambda parameter: parameter.requires_grad,
    lambda parameter, flag: parameter.requires_grad == flag,
    lambda parameter, flag: parameter.requires_grad_(flag),
    "changed requires_grad of {}",
)
TENSOR_HOOKS = TensorProperty(
    _parameters,
    tensor_hook_keys,
    lambda parameter, keys: tensor_hook_keys(parameter) == keys,
    _remove_tensor_hooks,
    "left tensor hooks on parameters {}",
)
BUFFERS = TensorProperty(_buffers, _clone, same_tensor, restore_tensor, "modified buffers {}")
MODULE_HOOKS = ModuleHooks()
TRAINING_MODE = TrainingMode()
DATA_BATCHES = DataBatches()
LOSS_REDUCTION = LossReduction()
# in the order of the messages; the parameter entries restore values before gradients
PROBLEM_STATE: tuple[Watched, ...] = (
    PARAMETER_NAMES,
    PARAMETER_VALUES,
    GRADIENTS,
    REQUIRES_GRAD,
    TENSOR_HOOKS,
    BUFFERS,
    MODULE_HOOKS,
    TRAINING_MODE,
    DATA_BATCHES,
    LOSS_REDUCTION,
)


def watch_problem(problem: Problem) -> Snapshot:
    """A snapshot of ``problem``'s model, data and loss (:data:`PROBLEM_STATE`)."""
    return Snapshot(PROBLEM_STATE, problem)
