"""Where one candidate call lies in the claim space, derived from its problem and request.

Everything is read off the problem itself (its modules, one forward pass of its first batch
with hooks, its data and loss), never from a table keyed by case ids, so a new case or a
purpose-built problem is placed the same way as the canonical ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kfac_conformance.cases.architectures import Pool
from kfac_conformance.contract.problem import CONVOLUTIONS, Problem, Request

Coordinate = tuple[str, str]  # (dimension, value), both as the map prints them

# a Linear layer's shared axes are counted up to this (the claim space's "2+")
MAX_SHARED_AXES = 2


@dataclass(frozen=True)
class LayerUse:
    """One requested layer as the forward pass sees it."""

    layer_type: str
    geometry: tuple[str, ...]  # a convolution's kernel, stride, padding and dilation values
    groups: str | None  # a convolution's groups (conv_groups), None for other layers
    shared_axes: int | None  # a Linear layer's axes between batch and features
    # weight sharing: several positions per datum (a convolution, or shared axes)
    has_positions: bool
    has_bias: bool
    uses: int  # calls in one forward pass (2 or more: weight tying)


@dataclass(frozen=True)
class Call:
    """One ``compute(problem, request)`` call: the request, the problem-wide coordinates, every
    requested layer's use, and where the shared positions end (``None`` without any)."""

    request: Request
    problem_coordinates: frozenset[Coordinate]
    layers: tuple[tuple[str, LayerUse], ...]
    pooling: str | None

    @property
    def pair(self) -> tuple[str, str]:
        return self.request.fisher_type, self.request.approximation

    def coordinates(self, compared: Sequence[str] | None = None) -> frozenset[Coordinate]:
        """The call's coordinates, with layer features from ``compared`` (default: all layers)."""
        uses = [use for name, use in self.layers if compared is None or name in compared]
        found = set(self.problem_coordinates)
        found.add(("flavour", self.request.kfac_approx))
        if any(use.has_bias for use in uses):
            found.add(("bias mode", self.request.bias))
        for use in uses:
            found.add(("layer type", use.layer_type))
            found.update(("conv geometry", value) for value in use.geometry)
            if use.groups is not None:
                found.add(("conv groups", use.groups))
            if use.shared_axes is not None:
                found.add(("Linear shared axes", shared_axes_value(use.shared_axes)))
            if use.uses > 1:
                found.add(("weight tying", "tied"))
        if self.pooling is not None and any(use.has_positions for use in uses):
            found.add(("pooling", self.pooling))
        return frozenset(found)


def shared_axes_value(axes: int) -> str:
    return str(axes) if axes < MAX_SHARED_AXES else f"{MAX_SHARED_AXES}+"


def conv_geometry(layer: nn.Module) -> tuple[str, ...]:
    """The values of a convolution of any dimension (``"1x1"``: a kernel of one tap on every
    axis)."""
    one_by_one = all(size == 1 for size in layer.kernel_size)
    if isinstance(layer.padding, str):  # "same" pads a kernel larger than 1x1, "valid" never
        padded = layer.padding == "same" and not one_by_one
    else:
        padded = max(layer.padding) > 0
    values = ["1x1" if one_by_one else "kernel>1"]
    values += [
        name
        for name, present in (
            ("stride>1", max(layer.stride) > 1),
            ("padding>0", padded),
            ("dilation>1", max(layer.dilation) > 1),
        )
        if present
    ]
    return tuple(values)


def conv_groups(layer: nn.Module) -> str:
    """``"1"``, ``"grouped"`` (``groups > 1``) or ``"depthwise"`` (one input channel per
    group)."""
    if layer.groups == 1:
        return "1"
    return "depthwise" if layer.groups == layer.in_channels else "grouped"


def _batches_value(problem: Problem) -> str:
    sizes = {X.shape[0] for X, _ in problem.batches}
    if len(problem.batches) == 1:
        return "one"
    return "several, equal sizes" if len(sizes) == 1 else "several, unequal sizes"


def problem_coordinates(problem: Problem) -> frozenset[Coordinate]:
    """What the loss and the data contribute: loss, reduction, dtype, batches, data, terms."""
    num_data = sum(X.shape[0] for X, _ in problem.batches)
    terms = problem.batches[0][1].shape[1:].numel()  # as Problem.scale_quantities counts them
    return frozenset(
        {
            ("loss", type(problem.loss_func).__name__),
            ("reduction", problem.loss_func.reduction),
            ("dtype", str(problem.dtype).removeprefix("torch.")),
            ("batches", _batches_value(problem)),
            ("data", "one datum" if num_data == 1 else "several data"),
            ("loss terms per datum", "one" if terms == 1 else "several"),
        }
    )


def _layer_use(module: nn.Module, input_ndims: list[int]) -> LayerUse:
    shared_axes = max(input_ndims) - 2 if isinstance(module, nn.Linear) and input_ndims else None
    is_conv = isinstance(module, CONVOLUTIONS)
    # an Embedding's indices have no feature axis: every axis after the batch axis is shared
    embedding_positions = isinstance(module, nn.Embedding) and max(input_ndims, default=1) > 1
    return LayerUse(
        layer_type=type(module).__name__,
        geometry=conv_geometry(module) if is_conv else (),
        groups=conv_groups(module) if is_conv else None,
        shared_axes=shared_axes,
        has_positions=is_conv or bool(shared_axes) or embedding_positions,
        has_bias=getattr(module, "bias", None) is not None,
        uses=len(input_ndims),
    )


def _pooling(events: list[str | None], uses: dict[str, LayerUse], output_ndim: int) -> str | None:
    """Where the positions of the first layer with weight sharing end: at the loss, in a pool
    (followed by at most one or by several parameter layers), or flattened into features."""
    shared = [i for i, name in enumerate(events) if name is not None and uses[name].has_positions]
    if not shared:
        return None
    pools = [i for i, name in enumerate(events) if name is None and i > shared[0]]
    if pools:
        after = sum(1 for name in events[pools[0] :] if name is not None)
        return "pooled at the end" if after <= 1 else "pooled mid-network"
    return "per-position loss" if output_ndim > 2 else "flattened into features"


def describe_call(problem: Problem, request: Request) -> Call:
    """The call's place in the claim space; one forward pass of the first batch, no gradients."""
    modules = {name: problem.model.get_submodule(name) for name in problem.layers}
    input_ndims: dict[str, list[int]] = {name: [] for name in modules}
    events: list[str | None] = []  # a requested layer's name, or None for a pooling module

    def on_layer(name: str):
        def hook(module, args, output) -> None:
            input_ndims[name].append(args[0].ndim)
            events.append(name)

        return hook

    handles = [module.register_forward_hook(on_layer(name)) for name, module in modules.items()]
    handles += [
        module.register_forward_hook(lambda module, args, output: events.append(None))
        for module in problem.model.modules()
        if isinstance(module, Pool)
    ]
    try:
        with torch.no_grad():
            output = problem.model(problem.batches[0][0])
    finally:
        for handle in handles:
            handle.remove()
    uses = {name: _layer_use(module, input_ndims[name]) for name, module in modules.items()}
    return Call(
        request,
        problem_coordinates(problem),
        tuple(uses.items()),
        _pooling(events, uses, output.ndim),
    )
