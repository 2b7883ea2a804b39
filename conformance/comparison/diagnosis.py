"""Block comparison with a diagnosis that knows the problem: its counts and shared axes.

:func:`kfac_conformance.execution.session.compare_blocks` stops at the first wrong layer and diagnoses it
alone. Checks that compare whole results use :func:`compare_diagnosed` instead, which adds
what one block cannot show: a constant factor named through the problem's counts (data,
loss terms per datum, batches, shared positions) and which layers are wrong when only some
are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kfac_conformance.checks.base import CheckFailed, Measurement
from kfac_conformance.comparison.blocks import diagnose, kfac_pattern, relative_error, restrict
from kfac_conformance.comparison.tolerances import layer_pattern
from kfac_conformance.contract.problem import Problem
from kfac_conformance.execution.session import compare_blocks
from kfac_ref.factors import EKFACFactors, KroneckerFactors


def problem_counts(problem: Problem) -> tuple[dict[str, float], dict[str, int]]:
    """``({"R", "N", "T", "K"}, {layer: S})``: the tutorial's reduction factor, data, loss terms
    per datum, batches, and the shared positions each layer sees per datum (found by a forward
    pass with hooks)."""
    shared: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                shared[name] = output.shape[2:].numel()
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
    convention_hints: Mapping[str, float] | None = None,
) -> None:
    """:func:`compare_blocks`, with the diagnosis of a failure extended by known scale
    conventions (``Session.convention_hints``), the problem's counts and the pattern of wrong
    layers. ``problem`` must be unchanged (a fresh one will do)."""
    try:
        compare_blocks(
            dict(result), dict(targets), layers, tolerance, measurement, context, alternatives
        )
    except CheckFailed as failed:
        counts, shared = problem_counts(problem)
        errors = {
            layer: relative_error(
                result[layer].to_dense(), restrict(targets[layer], kfac_pattern(result[layer]))
            )
            for layer in layers
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
                convention_hints,
            ),
            layer_pattern(errors, tolerance, shared),
        ]
        diagnosis = "; ".join(part for part in parts if part) or None
        raise CheckFailed(
            failed.message, failed.observed, failed.tolerance, diagnosis, failed.evidence
        ) from None
