"""Calling a candidate: capability gate, side-effect watch and restore, result validation."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from kfac_conformance.checks.base import CheckFailed, CheckSkipped
from kfac_conformance.problem import Candidate, Problem, Request
from torch import Tensor, nn

from kfac_ref.factors import KroneckerFactors

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


class CandidateError(Exception):
    """The candidate raised; keeps the exception and the last frames of its traceback."""

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception
        frames = traceback.format_exception(type(exception), exception, exception.__traceback__)
        self.traceback_tail = "".join(frames[-4:])
        super().__init__(f"{type(exception).__name__}: {exception}")


@dataclass
class _Snapshot:
    parameters: dict[str, Tensor]
    grads: dict[str, Tensor | None]
    requires_grad: dict[str, bool]
    hooks: dict[str, dict[str, list]]
    training: dict[str, bool]
    default_dtype: torch.dtype
    rng_state: Tensor
    grad_enabled: bool

    @classmethod
    def take(cls, model: nn.Module) -> _Snapshot:
        params = dict(model.named_parameters())
        return cls(
            parameters={n: p.detach().clone() for n, p in params.items()},
            grads={
                n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()
            },
            requires_grad={n: p.requires_grad for n, p in params.items()},
            hooks={
                name: {d: list(getattr(module, d, {}).keys()) for d in _HOOK_DICTS}
                for name, module in model.named_modules()
            },
            training={name: module.training for name, module in model.named_modules()},
            default_dtype=torch.get_default_dtype(),
            rng_state=torch.get_rng_state(),
            grad_enabled=torch.is_grad_enabled(),
        )

    def restore_and_report(self, model: nn.Module) -> list[str]:
        """Undo what changed since the snapshot; return one message per kind of change."""
        changes = []
        if torch.get_default_dtype() != self.default_dtype:
            changes.append(f"changed the default dtype to {torch.get_default_dtype()}")
            torch.set_default_dtype(self.default_dtype)
        if not torch.equal(torch.get_rng_state(), self.rng_state):
            changes.append("used or changed the global RNG state")
            torch.set_rng_state(self.rng_state)
        if torch.is_grad_enabled() != self.grad_enabled:
            changes.append(f"left grad mode {'on' if torch.is_grad_enabled() else 'off'}")
            torch.set_grad_enabled(self.grad_enabled)
        params = dict(model.named_parameters())
        if set(params) != set(self.parameters):
            changes.append("added or removed parameters")
        modified = [
            n
            for n, p in params.items()
            if n in self.parameters and not torch.equal(p.detach(), self.parameters[n])
        ]
        if modified:
            changes.append(f"modified parameters {modified}")
        grads_changed = [n for n, p in params.items() if not _same_grad(p.grad, self.grads.get(n))]
        if grads_changed:
            changes.append(f"changed .grad of {grads_changed}")
        flipped = [
            n
            for n, p in params.items()
            if p.requires_grad != self.requires_grad.get(n, p.requires_grad)
        ]
        if flipped:
            changes.append(f"changed requires_grad of {flipped}")
        with torch.no_grad():
            for name, param in params.items():
                if name in self.parameters:
                    param.copy_(self.parameters[name])
                    param.grad = self.grads[name]
                    param.requires_grad_(self.requires_grad[name])
        left_hooks = []
        for name, module in model.named_modules():
            for dict_name in _HOOK_DICTS:
                hooks = getattr(module, dict_name, None)
                before = self.hooks.get(name, {}).get(dict_name, [])
                extra = [key for key in list(hooks or {}) if key not in before]
                for key in extra:
                    del hooks[key]
                if extra:
                    left_hooks.append(f"{name or '<model>'}.{dict_name}")
        if left_hooks:
            changes.append(f"left hooks on {left_hooks}")
        mode_changed = [
            n for n, m in model.named_modules() if m.training != self.training.get(n, m.training)
        ]
        if mode_changed:
            changes.append(f"changed train/eval mode of {mode_changed}")
            for name, module in model.named_modules():
                module.training = self.training.get(name, module.training)
        return changes


def _same_grad(now: Tensor | None, before: Tensor | None) -> bool:
    if now is None or before is None:
        return now is None and before is None
    return torch.equal(now, before)


def expected_shapes(problem: Problem, layer: str, bias: str) -> tuple[int, int, str]:
    """``(size of A, size of B, bias mode)`` a correct result has for ``layer``."""
    module = problem.model.get_submodule(layer)
    weight = module.weight
    d_out, d_in = weight.shape[0], weight.shape[1:].numel()
    has_bias = getattr(module, "bias", None) is not None
    if not has_bias:
        return d_in, d_out, "none"
    return d_in + (bias == "joint"), d_out, bias


def validate_result(
    result: object, problem: Problem, request: Request
) -> dict[str, KroneckerFactors]:
    """Raise :class:`CheckFailed` with a precise message when the result is malformed."""
    if not isinstance(result, Mapping):
        raise CheckFailed(
            f"invalid result: compute must return a mapping of layer name to KroneckerFactors, got {type(result).__name__}"
        )
    missing = [layer for layer in problem.layers if layer not in result]
    extra = [key for key in result if key not in problem.layers]
    if missing or extra:
        raise CheckFailed(
            f"invalid result: layers missing {missing}, unexpected {extra} (asked for {problem.layers})"
        )
    validated = {}
    for layer in problem.layers:
        factors = result[layer]
        if not isinstance(factors, KroneckerFactors):
            raise CheckFailed(
                f"invalid result for layer {layer!r}: expected KroneckerFactors, got {type(factors).__name__}"
            )
        size_A, size_B, bias = expected_shapes(problem, layer, request.bias)
        if factors.bias != bias:
            raise CheckFailed(
                f"invalid result for layer {layer!r}: bias mode {factors.bias!r}, expected {bias!r}"
            )
        for name, factor, size in (("A", factors.A, size_A), ("B", factors.B, size_B)):
            where = f"invalid result for layer {layer!r}, factor {name}"
            if factor.is_complex() or not factor.is_floating_point():
                raise CheckFailed(f"{where}: dtype {factor.dtype} is not a real floating dtype")
            if tuple(factor.shape) != (size, size):
                raise CheckFailed(f"{where}: shape {tuple(factor.shape)}, expected {(size, size)}")
            if factor.dtype != problem.dtype:
                raise CheckFailed(
                    f"{where}: dtype {factor.dtype}, expected the problem's {problem.dtype}"
                )
            if factor.device != problem.device:
                raise CheckFailed(f"{where}: on device {factor.device}, expected {problem.device}")
            if factor.requires_grad or factor.grad_fn is not None:
                raise CheckFailed(f"{where}: requires grad or carries an autograd graph; detach it")
            if not torch.isfinite(factor).all():
                raise CheckFailed(f"{where}: has NaN or inf entries")
        validated[layer] = factors
    return validated


def call_candidate(
    candidate: Candidate, problem: Problem, request: Request, check_capabilities: bool = True
) -> tuple[dict[str, KroneckerFactors], list[str]]:
    """Run ``candidate.compute`` under watch; returns the validated result and its side effects.

    Raises :class:`CheckSkipped` outside the claimed capabilities, :class:`CandidateError`
    when the candidate raises and :class:`CheckFailed` when the result is malformed.
    """
    if check_capabilities:
        reason = candidate.capabilities.unsupported(problem, request)
        if reason is not None:
            raise CheckSkipped(reason)
    snapshot = _Snapshot.take(problem.model)
    try:
        result = candidate.compute(problem, request)
    except Exception as exception:  # the candidate's failure, reported as an error
        snapshot.restore_and_report(problem.model)
        raise CandidateError(exception) from exception
    side_effects = snapshot.restore_and_report(problem.model)
    return validate_result(result, problem, request), side_effects
