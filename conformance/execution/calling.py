"""Calling a candidate: capability gate, side-effect watch and restore, result validation.

Every call of ``candidate.compute`` goes through :func:`call_candidate`, which snapshots what
a candidate could change (global torch state, and the model, data and loss of its problem:
the tables of :mod:`~kfac_conformance.execution.watched_state` and
:mod:`~kfac_conformance.execution.watched_problem`), restores it afterwards and reports each
change as a side effect, then validates the result.
"""

from __future__ import annotations

import dataclasses
import threading
import traceback
from collections.abc import Mapping
from types import TracebackType

import torch
from torch import Tensor

from kfac_conformance.contract.outcomes import (
    CandidateRefused,
    CheckFailed,
    CheckSkipped,
    NotSupported,
)
from kfac_conformance.contract.problem import Candidate, Problem, Request
from kfac_conformance.execution.watched_problem import watch_problem
from kfac_conformance.execution.watched_state import GlobalState
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors

_TRACEBACK_FRAMES = 4


class CandidateError(Exception):
    """The candidate raised; keeps the exception, the last frames of its traceback and any
    side effects it left before raising (already restored)."""

    def __init__(self, exception: BaseException, side_effects: list[str] | None = None) -> None:
        self.exception = exception
        self.side_effects = side_effects or []
        # The first frame is call_candidate's own; the rest are the candidate's.
        tb = exception.__traceback__.tb_next if exception.__traceback__ else None
        self.traceback_tail = traceback_tail(exception, tb)
        super().__init__(f"{type(exception).__name__}: {exception}")

    @property
    def could_not_import(self) -> bool:
        """The candidate failed to import a module (its library is missing): no verdict on
        its KFAC, and no exception raised "as it should" either."""
        return isinstance(self.exception, ImportError)

    def describe(self) -> str:
        """The message of the item it ends: what the candidate raised and its last frames."""
        if self.could_not_import:
            module = getattr(self.exception, "name", None) or "a module"
            cause = f"the candidate could not import {module}: install it ({self})"
        else:
            cause = f"the candidate raised {self}"
        return f"{cause}\n{self.traceback_tail}"


def traceback_tail(exception: BaseException, tb: TracebackType | None) -> str:
    """The last frames of ``tb`` and the exception's own line, as Python prints them."""
    frames = traceback.format_tb(tb)[-_TRACEBACK_FRAMES:]
    return "".join(frames + traceback.format_exception_only(type(exception), exception))


class CallAbandoned(BaseException):
    """Raised in a thread whose check timed out: the harness no longer waits for it.

    A ``BaseException`` so that no check's ``except Exception`` swallows it; the thread then
    ends without touching global state or the session again.
    """


_ABANDONED = "_kfac_conformance_abandoned"


def abandon(thread: threading.Thread) -> None:
    """Mark ``thread`` as given up on: its candidate calls stop restoring global state
    (a late restore would clobber the state of whatever runs by then) and its next call raises
    :class:`CallAbandoned`.

    The mark is an attribute of the thread object, so it lives and goes with the thread:
    no registry to lock, nor to empty."""
    setattr(thread, _ABANDONED, True)


def _is_abandoned() -> bool:
    return getattr(threading.current_thread(), _ABANDONED, False)


def expected_shapes(problem: Problem, layer: str, bias: str) -> tuple[int, int, str]:
    """``(size of A, size of B, bias mode)`` a correct result has for ``layer`` (for one group
    of a grouped convolution: its ``C_out / groups`` output channels)."""
    module = problem.model.get_submodule(layer)
    weight = module.weight
    d_out, d_in = weight.shape[0] // layer_groups(problem, layer), weight.shape[1:].numel()
    has_bias = getattr(module, "bias", None) is not None
    if not has_bias:
        return d_in, d_out, "none"
    return d_in + (bias == "joint"), d_out, bias


def layer_groups(problem: Problem, layer: str) -> int:
    """The layer's ``groups`` (1 for every layer but a grouped convolution)."""
    return getattr(problem.model.get_submodule(layer), "groups", 1)


def _validate_factor(
    where: str, factor: object, shape: tuple[int, ...], problem: Problem, hygiene: list[str]
) -> Tensor:
    """The factor to judge: ``CheckFailed`` when its values cannot be judged; a factor that
    carries autograd or has another dtype than the problem's is repaired (detached, cast)
    and the breach of the contract appended to ``hygiene`` (the ``hygiene/*`` checks report it)."""

    def invalid(reason: str) -> CheckFailed:
        return CheckFailed(f"invalid result for {where}: {reason}")

    if not isinstance(factor, Tensor):
        raise invalid(f"expected a torch.Tensor, got {type(factor).__name__}")
    if factor.layout != torch.strided:
        raise invalid(f"layout {factor.layout}, expected a dense (strided) tensor")
    if factor.is_complex() or not factor.is_floating_point():
        raise invalid(f"dtype {factor.dtype} is not a real floating dtype")
    if tuple(factor.shape) != shape:
        raise invalid(f"shape expected {shape}, got {tuple(factor.shape)}")
    if factor.device != problem.device:
        raise invalid(f"device expected {problem.device}, got {factor.device}")
    if factor.requires_grad or factor.grad_fn is not None:
        hygiene.append(f"{where}: requires grad or carries an autograd graph; detach it")
        factor = factor.detach()
    if factor.dtype != problem.dtype:
        hygiene.append(
            f"{where}: dtype {factor.dtype}, not the problem's {problem.dtype}; "
            "return the problem's dtype"
        )
        factor = factor.to(problem.dtype)
    nan, inf = int(torch.isnan(factor).sum()), int(torch.isinf(factor).sum())
    if nan or inf:
        raise invalid(f"has {nan} NaN and {inf} inf entries")
    return factor


def validate_result(
    result: object, problem: Problem, request: Request, hygiene: list[str]
) -> dict[str, KroneckerFactors]:
    """The result as the checks judge it: ``CheckFailed`` with a precise message when it is
    malformed; factors repaired as :func:`_validate_factor` says, noted in ``hygiene``."""
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
        factors, groups = result[layer], layer_groups(problem, layer)
        if groups == 1:
            validated[layer] = _validated_layer(
                factors, expected_type, f"layer {layer!r}", problem, layer, request, hygiene
            )
            continue
        if not (isinstance(factors, GroupedFactors) and len(factors.groups) == groups):
            found = (
                f"GroupedFactors of {len(factors.groups)} groups"
                if isinstance(factors, GroupedFactors)
                else type(factors).__name__
            )
            raise CheckFailed(
                f"invalid result for layer {layer!r}: a convolution with groups={groups} "
                f"needs GroupedFactors of {groups} {expected_type.__name__}, got {found}"
            )
        validated[layer] = GroupedFactors(
            tuple(
                _validated_layer(
                    group,
                    expected_type,
                    f"layer {layer!r}, group {g}",
                    problem,
                    layer,
                    request,
                    hygiene,
                )  # fmt: skip
                for g, group in enumerate(factors.groups)
            )
        )
    return validated


def _validated_layer(
    factors: object,
    expected_type: type,
    where: str,
    problem: Problem,
    layer: str,
    request: Request,
    hygiene: list[str],
) -> KroneckerFactors | EKFACFactors:
    """One layer's (or one group's) factors, checked and repaired as :func:`validate_result` says."""
    if not isinstance(factors, expected_type):
        raise CheckFailed(
            f"invalid result for {where}: expected {expected_type.__name__}, got {type(factors).__name__}"
        )
    size_A, size_B, bias = expected_shapes(problem, layer, request.bias)
    if factors.bias != bias:
        raise CheckFailed(
            f"invalid result for {where}: bias mode expected {bias!r}, got {factors.bias!r}"
        )
    if expected_type is EKFACFactors:
        shapes = {"QA": (size_A, size_A), "QB": (size_B, size_B), "S": (size_B, size_A)}
        if bias == "separate":
            shapes["S_bias"] = (size_B,)
    else:
        shapes = {"A": (size_A, size_A), "B": (size_B, size_B)}
    repaired = {
        name: _validate_factor(
            f"{where}, factor {name}", getattr(factors, name), shape, problem, hygiene
        )
        for name, shape in shapes.items()
    }
    return dataclasses.replace(factors, **repaired)


def call_candidate(
    candidate: Candidate, problem: Problem, request: Request, check_capabilities: bool = True
) -> tuple[dict[str, KroneckerFactors], list[str], list[str]]:
    """Run ``candidate.compute`` under watch; returns the validated result, its side effects
    and its breaches of hygiene (see :func:`validate_result`).

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
    problem_state = watch_problem(problem)

    def restore() -> list[str]:
        return problem_state.restore_and_report() + global_state.restore_and_report()

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
    hygiene: list[str] = []
    return validate_result(result, problem, request, hygiene), side_effects, hygiene
