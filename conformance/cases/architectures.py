"""A small JSON-able language for the test networks, so that cases can be stored as data.

An architecture is a list of layer specs, each a list ``[kind, *arguments]``:

- ``["linear", d_in, d_out, bias]``;
- ``["conv1d" | "conv2d" | "conv3d", c_in, c_out, kernel, stride, padding, dilation, bias]``,
  optionally followed by ``groups`` (a grouped convolution; absent means 1);
- ``["embedding", num_embeddings, dim]``: only as the first layer, whose inputs are then
  indices (:func:`input_vocabulary`);
- ``["tanh"]``, ``["sigmoid"]``, ``["relu"]``;
- ``["sum", dims]`` / ``["mean", dims]``: pool over the given axes (the shared axes);
- ``["flatten"]`` (all but the batch axis); ``["movedim", source, destination]``;
- ``["tied", index]``: the module at position ``index`` applied once more (weight tying).

The result is an ``nn.Sequential`` whose modules are named ``"0"``, ``"1"``, ...; a tied use
is the same module object again, so its parameters (and its name, ``"<index>"``) are those of
its first use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

LayerSpec = Sequence


class Pool(nn.Module):
    """Sum or average over ``dims``: the reduction over shared axes that KFAC-reduce assumes."""

    def __init__(self, how: str, dims: Sequence[int]) -> None:
        super().__init__()
        self.how, self.dims = how, tuple(dims)

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(self.dims) if self.how == "sum" else x.mean(self.dims)

    def extra_repr(self) -> str:
        return f"{self.how}, dims={self.dims}"


class MoveDim(nn.Module):
    def __init__(self, source: int, destination: int) -> None:
        super().__init__()
        self.source, self.destination = source, destination

    def forward(self, x: Tensor) -> Tensor:
        return x.movedim(self.source, self.destination)


_ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}
_CONVOLUTIONS = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}
# the spec kinds of the layers with parameters
PARAMETER_KINDS = ("linear", *_CONVOLUTIONS, "embedding")


def build_layer(spec: LayerSpec) -> nn.Module:
    kind, *args = spec
    if kind == "linear":
        d_in, d_out, bias = args
        return nn.Linear(d_in, d_out, bias=bias)
    if kind in _CONVOLUTIONS:
        c_in, c_out, kernel, stride, padding, dilation, bias, *groups = args
        return _CONVOLUTIONS[kind](
            c_in,
            c_out,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            groups=groups[0] if groups else 1,
        )
    if kind == "embedding":
        num_embeddings, dim = args
        return nn.Embedding(num_embeddings, dim)
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]()
    if kind in ("sum", "mean"):
        return Pool(kind, args[0])
    if kind == "flatten":
        return nn.Flatten()
    if kind == "movedim":
        return MoveDim(*args)
    raise ValueError(f"unknown layer kind {kind!r} in architecture spec {list(spec)}")


def build_model(
    architecture: Sequence[LayerSpec], dtype: torch.dtype, generator: torch.Generator
) -> nn.Sequential:
    """The network, with weights drawn from ``generator`` (uniform, PyTorch's default scale)."""
    modules: list[nn.Module] = []
    for spec in architecture:
        modules.append(
            modules[_tied_source(spec, len(modules))] if spec[0] == "tied" else build_layer(spec)
        )
    return initialised(nn.Sequential(*modules), dtype, generator)


def initialised(model: nn.Module, dtype: torch.dtype, generator: torch.Generator) -> nn.Module:
    """``model`` in ``dtype`` with every parameter drawn from ``generator``, uniform on
    ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (PyTorch's default scale)."""
    model = model.to(dtype)
    with torch.no_grad():
        for param in model.parameters():
            fan_in = param.shape[1:].numel() if param.ndim > 1 else param.shape[0]
            bound = 1.0 / fan_in**0.5
            param.copy_(
                torch.rand(param.shape, generator=generator, dtype=dtype) * 2 * bound - bound
            )
    return model


def input_vocabulary(architecture: Sequence[LayerSpec]) -> int | None:
    """The number of indices the inputs are drawn from when the network starts with an
    embedding, else ``None`` (real inputs)."""
    first = architecture[0] if architecture else None
    return first[1] if first is not None and first[0] == "embedding" else None


def _tied_source(spec: LayerSpec, position: int) -> int:
    source = spec[1]
    if not (isinstance(source, int) and 0 <= source < position):
        raise ValueError(f"{list(spec)} at position {position} must name an earlier module")
    return source


def resolve_tied(architecture: Sequence[LayerSpec], spec: LayerSpec) -> LayerSpec:
    """The spec of the module a ``["tied", index]`` spec applies again (any other spec itself)."""
    return architecture[spec[1]] if spec[0] == "tied" else spec


def tied_layers(architecture: Sequence[LayerSpec]) -> list[str]:
    """Names of the modules applied more than once (weight tying), in order."""
    return [str(source) for source in dict.fromkeys(s[1] for s in architecture if s[0] == "tied")]


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own, in ``named_modules`` order."""
    return [
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ]
