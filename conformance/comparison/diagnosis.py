"""Block comparison with a diagnosis that knows the problem: its counts and shared axes.

:func:`kfac_conformance.execution.session.compare_blocks` stops at the first wrong layer and diagnoses it
alone. Checks that compare whole results use :func:`compare_diagnosed` instead, which adds
what one block cannot show: which layers are wrong when only some are, and, when every layer
is off by a constant factor, the record of those factors and the problem's counts (data, loss
terms per datum, batches, shared positions) that the run's scale summary judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kfac_conformance.checks.base import CheckFailed, Measurement
from kfac_conformance.comparison.blocks import (
    diagnose,
    fitted_factor,
    kfac_pattern,
    relative_error,
    restrict,
)
from kfac_conformance.comparison.scale_records import failure_record, layer_record
from kfac_conformance.comparison.tolerances import layer_pattern
from kfac_conformance.contract.problem import CONVOLUTIONS, Problem, Request
from kfac_conformance.execution.session import compare_blocks
from kfac_ref.factors import EKFACFactors, KroneckerFactors


def problem_counts(problem: Problem) -> tuple[dict[str, float], dict[str, int]]:
    """``({"R", "N", "T", "K"}, {layer: S})``: the tutorial's reduction factor, data, loss terms
    per datum, batches, and the shared positions each layer sees per datum (found by a forward
    pass with hooks)."""
    shared: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(module, CONVOLUTIONS):
                shared[name] = output.shape[2:].numel()
            elif isinstance(module, nn.Embedding):  # its inputs are indices, with no feature axis
                shared[name] = args[0].shape[1:].numel()
            else:
                shared[name] = args[0].shape[1:-1].numel()

        return hook

    modules = {name: problem.model.get_submodule(name) for name in problem.layers}
    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            X, _ = problem.batches[0]
            output = problem.model(X)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(problem.loss_func, nn.CrossEntropyLoss):
        terms = output.shape[2:].numel()
    else:
        terms = output[0].numel()
    counts = {
        "R": float(problem.scale_quantities()["R"]),
        "N": float(sum(X.shape[0] for X, _ in problem.batches)),
        "T": float(terms),
        "K": float(len(problem.batches)),
    }
    return counts, shared


def compare_diagnosed(
    problem: Problem,
    result: Mapping[str, KroneckerFactors] | Mapping[str, EKFACFactors],
    targets: Mapping[str, Tensor],
    layers: Sequence[str],
    tolerance: float,
    measurement: Measurement,
    context: str,
    alternatives: dict[str, dict[str, Tensor]] | None = None,
    request: Request | None = None,
    against: Problem | None = None,
) -> None:
    """:func:`compare_blocks`, with the diagnosis of a failure extended by the pattern of wrong
    layers and, for a scale-only failure (every layer a constant multiple of its target),
    the scale record the run's summary judges conventions by (``CheckFailed.scale``, see
    :mod:`kfac_conformance.comparison.scale_records`). ``request``: what ``result`` answers
    (without it no scale record is made); ``against``: the problem whose answer by the
    candidate ``targets`` are, when they are not exact or reference blocks (invariance
    checks). ``problem`` and ``against`` must be unchanged (fresh ones will do)."""
    try:
        compare_blocks(
            dict(result), dict(targets), layers, tolerance, measurement, context, alternatives
        )
    except CheckFailed as failed:
        counts, shared = problem_counts(problem)
        restricted = {
            layer: restrict(targets[layer], kfac_pattern(result[layer])) for layer in layers
        }
        errors = {
            layer: relative_error(result[layer].to_dense(), restricted[layer]) for layer in layers
        }
        first_wrong = next(layer for layer in layers if not errors[layer] <= tolerance)
        layer_alternatives = {
            name: blocks[first_wrong] for name, blocks in (alternatives or {}).items()
        }
        parts = [
            diagnose(
                result[first_wrong],
                targets[first_wrong],
                tolerance,
                layer_alternatives,
                {**counts, "S": shared.get(first_wrong, 1)},
            ),
            layer_pattern(errors, tolerance, shared),
        ]
        diagnosis = "; ".join(part for part in parts if part) or None
        fitted = {
            layer: fitted_factor(result[layer].to_dense(), restricted[layer]) for layer in layers
        }
        scale = None
        if request is not None:
            scale = scale_failure(problem, request, counts, shared, fitted, tolerance, against)
        raise CheckFailed(
            failed.message, failed.observed, failed.tolerance, diagnosis, failed.evidence, scale
        ) from None


def scale_failure(
    problem: Problem,
    request: Request,
    counts: Mapping[str, float],
    shared: Mapping[str, int],
    fitted: Mapping[str, tuple[float, float]],
    tolerance: float,
    against: Problem | None = None,
) -> dict | None:
    """The :func:`~kfac_conformance.comparison.scale_records.failure_record` of a failed
    comparison whose every layer is a constant multiple of its target (``fitted``: layer ->
    :func:`fitted_factor`), or ``None`` when one is not (no convention can explain it)."""
    if any(factor == 0 or not residual <= tolerance for factor, residual in fitted.values()):
        return None
    layers = [
        layer_record(
            layer,
            type(problem.model.get_submodule(layer)).__name__,
            shared.get(layer, 1),
            factor,
            residual,
        )
        for layer, (factor, residual) in fitted.items()
    ]
    return failure_record(
        request.fisher_type,
        problem.scale_quantities(),
        counts,
        tolerance,
        layers,
        None if against is None else against.scale_quantities(),
    )
