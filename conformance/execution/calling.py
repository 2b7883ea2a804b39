"""Calling a candidate: capability gate, side-effect watch and restore, result validation.

Every call of ``candidate.compute`` goes through :func:`call_candidate`, which snapshots what
a candidate could change (global torch state, and the model, data and loss of its problem),
restores it afterwards and reports each change as a side effect, then validates the result.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.modules.module as module_globals
from torch import Tensor

from kfac_conformance.contract.outcomes import (
    CandidateRefused,
    CheckFailed,
    CheckSkipped,
    NotSupported,
)
from kfac_conformance.contract.problem import Candidate, Problem, Request
from kfac_ref.factors import EKFACFactors, KroneckerFactors

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)
_TRACEBACK_FRAMES = 4


class CandidateError(Exception):
    """The candidate raised; keeps the exception, the last frames of its traceback and any
    side effects it left before raising (already restored)."""

    def __init__(self, exception: BaseException, side_effects: list[str] | None = None) -> None:
        self.exception = exception
        self.side_effects = side_effects or []
        # The first frame is call_candidate's own; the rest are the candidate's.
        tb = exception.__traceback__.tb_next if exception.__traceback__ else None
        frames = traceback.format_tb(tb)[-_TRACEBACK_FRAMES:]
        self.traceback_tail = "".join(
            frames + traceback.format_exception_only(type(exception), exception)
        )
        super().__init__(f"{type(exception).__name__}: {exception}")


class CallAbandoned(BaseException):
    """Raised in a thread whose check timed out: the harness no longer waits for it.

    A ``BaseException`` so that no check's ``except Exception`` swallows it; the thread then
    ends without touching global state or the session again.
    """


_abandoned_threads: set[threading.Thread] = set()
_abandoned_lock = threading.Lock()


def abandon(thread: threading.Thread) -> None:
    """Mark ``thread`` as given up on: its candidate calls stop restoring global state
    (a late restore would clobber the state of whatever runs by then) and its next call raises
    :class:`CallAbandoned`."""
    with _abandoned_lock:
        _abandoned_threads.add(thread)


def _is_abandoned() -> bool:
    with _abandoned_lock:
        return threading.current_thread() in _abandoned_threads


@dataclass
class GlobalState:
    """Process-wide torch state a candidate can change; restorable."""

    default_dtype: torch.dtype
    rng_state: Tensor
    cuda_rng_states: list[Tensor] | None
    grad_enabled: bool
    anomaly_enabled: bool
    deterministic: bool
    global_hooks: dict[str, list]

    @classmethod
    def take(cls) -> GlobalState:
        return cls(
            default_dtype=torch.get_default_dtype(),
            rng_state=torch.get_rng_state(),
            # Reading CUDA RNG states would initialise CUDA; only watch it once it is in use.
            cuda_rng_states=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            grad_enabled=torch.is_grad_enabled(),
            anomaly_enabled=torch.is_anomaly_enabled(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            global_hooks={
                name: list(getattr(module_globals, name, {})) for name in _GLOBAL_HOOK_DICTS
            },
        )

    def restore_and_report(self) -> list[str]:
        """Undo what changed since the snapshot; one message per kind of change."""
        changes = []
        if torch.get_default_dtype() != self.default_dtype:
            changes.append(f"changed the default dtype to {torch.get_default_dtype()}")
            torch.set_default_dtype(self.default_dtype)
        if not torch.equal(torch.get_rng_state(), self.rng_state):
            changes.append("used or changed the global RNG state")
            torch.set_rng_state(self.rng_state)
        if self.cuda_rng_states is not None:
            now = torch.cuda.get_rng_state_all()
            if any(not torch.equal(a, b) for a, b in zip(now, self.cuda_rng_states, strict=True)):
                changes.append("used or changed the global CUDA RNG state")
                torch.cuda.set_rng_state_all(self.cuda_rng_states)
        if torch.is_grad_enabled() != self.grad_enabled:
            changes.append(f"left grad mode {'on' if torch.is_grad_enabled() else 'off'}")
            torch.set_grad_enabled(self.grad_enabled)
        if torch.is_anomaly_enabled() != self.anomaly_enabled:
            changes.append(
                f"left anomaly detection {'on' if torch.is_anomaly_enabled() else 'off'}"
            )
            torch.set_anomaly_enabled(self.anomaly_enabled)
        if torch.are_deterministic_algorithms_enabled() != self.deterministic:
            changes.append("changed torch.use_deterministic_algorithms")
            torch.use_deterministic_algorithms(self.deterministic)
        left = []
        for name, before in self.global_hooks.items():
            hooks = getattr(module_globals, name, None)
            extra = [key for key in list(hooks or {}) if key not in before]
            for key in extra:
                del hooks[key]
            if extra:
                left.append(name)
        if left:
            changes.append(f"left global module hooks {left}")
        return changes


def _tensor_hook_keys(tensor: Tensor) -> list:
    keys = list(tensor._backward_hooks or {})
    keys += list(getattr(tensor, "_post_accumulate_grad_hooks", None) or {})
    return keys


@dataclass
class _ProblemSnapshot:
    """The model (parameters, buffers, hooks, modes), data and loss of one problem."""

    parameters: dict[str, Tensor]
    buffers: dict[str, Tensor]
    grads: dict[str, Tensor | None]
    requires_grad: dict[str, bool]
    tensor_hooks: dict[str, list]
    hooks: dict[str, dict[str, list]]
    training: dict[str, bool]
    batches: list[tuple[Tensor, Tensor]]
    reduction: str

    @classmethod
    def take(cls, problem: Problem) -> _ProblemSnapshot:
        model = problem.model
        params = dict(model.named_parameters())
        return cls(
            parameters={n: p.detach().clone() for n, p in params.items()},
            buffers={n: b.detach().clone() for n, b in model.named_buffers()},
            grads={
                n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()
            },
            requires_grad={n: p.requires_grad for n, p in params.items()},
            tensor_hooks={n: _tensor_hook_keys(p) for n, p in params.items()},
            hooks={
                name: {d: list(getattr(module, d, None) or {}) for d in _HOOK_DICTS}
                for name, module in model.named_modules()
            },
            training={name: module.training for name, module in model.named_modules()},
            batches=[(X.detach().clone(), y.detach().clone()) for X, y in problem.batches],
            reduction=problem.loss_func.reduction,
        )

    def restore_and_report(self, problem: Problem) -> list[str]:
        """Undo what changed since the snapshot; one message per kind of change."""
        model = problem.model
        changes = []
        params = dict(model.named_parameters())
        if set(params) != set(self.parameters):
            changes.append("added or removed parameters")
        modified = [
            n
            for n, p in params.items()
            if n in self.parameters and not _same(p, self.parameters[n])
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
        hooked = [
            n
            for n, p in params.items()
            if n in self.tensor_hooks and _tensor_hook_keys(p) != self.tensor_hooks[n]
        ]
        if hooked:
            changes.append(f"left tensor hooks on parameters {hooked}")
        with torch.no_grad():
            for name, param in params.items():
                if name in self.parameters:
                    _restore_tensor(param, self.parameters[name])
                    param.grad = self.grads[name]
                    param.requires_grad_(self.requires_grad[name])
                    _remove_tensor_hooks(param, self.tensor_hooks[name])
        buffers = dict(model.named_buffers())
        changed_buffers = [
            n for n, b in buffers.items() if n in self.buffers and not _same(b, self.buffers[n])
        ]
        if changed_buffers:
            changes.append(f"modified buffers {changed_buffers}")
            with torch.no_grad():
                for name in changed_buffers:
                    _restore_tensor(buffers[name], self.buffers[name])
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
            changes.append(f"changed train/eval mode of {[n or '<model>' for n in mode_changed]}")
            for name, module in model.named_modules():
                module.training = self.training.get(name, module.training)
        data_changed = len(problem.batches) != len(self.batches) or any(
            not (_same(X, X0) and _same(y, y0))
            for (X, y), (X0, y0) in zip(problem.batches, self.batches, strict=True)
        )
        if data_changed:
            changes.append("modified the data batches")
            problem.batches = [(X.clone(), y.clone()) for X, y in self.batches]
        if problem.loss_func.reduction != self.reduction:
            changes.append(f"changed the loss reduction to {problem.loss_func.reduction!r}")
            problem.loss_func.reduction = self.reduction
        return changes


def _same(now: Tensor, before: Tensor) -> bool:
    return (
        now.dtype == before.dtype
        and now.device == before.device
        and now.shape == before.shape
        and torch.equal(now.detach(), before)
    )


def _same_grad(now: Tensor | None, before: Tensor | None) -> bool:
    if now is None or before is None:
        return now is None and before is None
    return _same(now, before)


def _restore_tensor(tensor: Tensor, saved: Tensor) -> None:
    """Put ``saved`` back into ``tensor`` in place, even if its dtype, device or shape changed."""
    if (
        tensor.dtype == saved.dtype
        and tensor.device == saved.device
        and tensor.shape == saved.shape
    ):
        tensor.copy_(saved)
    else:
        tensor.data = saved.clone()


def _remove_tensor_hooks(tensor: Tensor, keep: list) -> None:
    for hooks in (tensor._backward_hooks, getattr(tensor, "_post_accumulate_grad_hooks", None)):
        for key in [key for key in list(hooks or {}) if key not in keep]:
            del hooks[key]


def expected_shapes(problem: Problem, layer: str, bias: str) -> tuple[int, int, str]:
    """``(size of A, size of B, bias mode)`` a correct result has for ``layer``."""
    module = problem.model.get_submodule(layer)
    weight = module.weight
    d_out, d_in = weight.shape[0], weight.shape[1:].numel()
    has_bias = getattr(module, "bias", None) is not None
    if not has_bias:
        return d_in, d_out, "none"
    return d_in + (bias == "joint"), d_out, bias


def _validate_factor(where: str, factor: object, shape: tuple[int, ...], problem: Problem) -> None:
    if not isinstance(factor, Tensor):
        raise CheckFailed(f"{where}: expected a torch.Tensor, got {type(factor).__name__}")
    if factor.layout != torch.strided:
        raise CheckFailed(f"{where}: layout {factor.layout}, expected a dense (strided) tensor")
    if factor.is_complex() or not factor.is_floating_point():
        raise CheckFailed(f"{where}: dtype {factor.dtype} is not a real floating dtype")
    if tuple(factor.shape) != shape:
        raise CheckFailed(f"{where}: shape expected {shape}, got {tuple(factor.shape)}")
    if factor.dtype != problem.dtype:
        raise CheckFailed(
            f"{where}: dtype expected the problem's {problem.dtype}, got {factor.dtype}"
        )
    if factor.device != problem.device:
        raise CheckFailed(f"{where}: device expected {problem.device}, got {factor.device}")
    if factor.requires_grad or factor.grad_fn is not None:
        raise CheckFailed(f"{where}: requires grad or carries an autograd graph; detach it")
    nan, inf = int(torch.isnan(factor).sum()), int(torch.isinf(factor).sum())
    if nan or inf:
        raise CheckFailed(f"{where}: has {nan} NaN and {inf} inf entries")


def validate_result(
    result: object, problem: Problem, request: Request
) -> dict[str, KroneckerFactors]:
    """Raise ``CheckFailed`` with a precise message when the result is malformed."""
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
    expected_type = EKFACFactors if request.approximation == "ekfac" else KroneckerFactors
    validated = {}
    for layer in problem.layers:
        factors = result[layer]
        if not isinstance(factors, expected_type):
            raise CheckFailed(
                f"invalid result for layer {layer!r}: expected {expected_type.__name__}, got {type(factors).__name__}"
            )
        size_A, size_B, bias = expected_shapes(problem, layer, request.bias)
        if factors.bias != bias:
            raise CheckFailed(
                f"invalid result for layer {layer!r}: bias mode expected {bias!r}, got {factors.bias!r}"
            )
        if expected_type is EKFACFactors:
            shapes = {"QA": (size_A, size_A), "QB": (size_B, size_B), "S": (size_B, size_A)}
            if bias == "separate":
                shapes["S_bias"] = (size_B,)
        else:
            shapes = {"A": (size_A, size_A), "B": (size_B, size_B)}
        for name, shape in shapes.items():
            where = f"invalid result for layer {layer!r}, factor {name}"
            _validate_factor(where, getattr(factors, name), shape, problem)
        validated[layer] = factors
    return validated


def call_candidate(
    candidate: Candidate, problem: Problem, request: Request, check_capabilities: bool = True
) -> tuple[dict[str, KroneckerFactors], list[str]]:
    """Run ``candidate.compute`` under watch; returns the validated result and its side effects.

    Raises :class:`CheckSkipped` outside the claimed capabilities (:class:`CandidateRefused`
    when the candidate itself raises :class:`NotSupported`), :class:`CandidateError`
    when the candidate raises (``sys.exit`` included) and :class:`CheckFailed` when the result
    is malformed. Global state and the problem are restored in every case, a Ctrl-C included,
    except in a thread the runner has abandoned (:class:`CallAbandoned`).
    """
    if _is_abandoned():
        raise CallAbandoned
    if check_capabilities:
        reason = candidate.capabilities.unsupported(problem, request)
        if reason is not None:
            raise CheckSkipped(reason)
    global_state = GlobalState.take()
    problem_state = _ProblemSnapshot.take(problem)

    def restore() -> list[str]:
        return problem_state.restore_and_report(problem) + global_state.restore_and_report()

    try:
        result = candidate.compute(problem, request)
    except NotSupported as refusal:
        if _is_abandoned():
            raise CallAbandoned from None
        restore()
        raise CandidateRefused(f"not supported (refused by the candidate): {refusal}") from refusal
    except (Exception, SystemExit) as exception:  # the candidate's failure, reported as an error
        if _is_abandoned():
            raise CallAbandoned from None
        raise CandidateError(exception, restore()) from exception
    except BaseException:  # Ctrl-C: leave the state as found, then let it stop the run
        if not _is_abandoned():
            restore()
        raise
    if _is_abandoned():
        raise CallAbandoned
    side_effects = restore()
    return validate_result(result, problem, request), side_effects
