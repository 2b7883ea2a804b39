r"""The architecture language of :mod:`kfac_conformance.cases.architectures`, in MLX.

The network computes what the PyTorch ``nn.Sequential`` computes, on the same channels-first
tensors (NCL, NCHW, NCDHW), built from MLX's own modules (so that mlx-kfac finds and
instruments them):

- ``["linear", d_in, d_out, bias]``: ``nn.Linear``, whose weight is ``d_out x d_in`` as in
  PyTorch;
- ``["conv1d" | "conv2d" | "conv3d", c_in, c_out, kernel, stride, padding, dilation, bias]``:
  ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d`` work channels last (NLC, NHWC, NDHWC) with an
  ``(out, k..., in)`` kernel, so the weight is moved from PyTorch's ``(out, in, k...)``
  (:func:`kernel_to_mlx`) and the module is wrapped in :class:`ChannelsFirst` (channels-first
  in and out);
- ``["embedding", num_embeddings, dim]``: ``nn.Embedding``, whose weight is
  ``num_embeddings x dim`` as in PyTorch, on the stored int64 indices;
- activations, ``sum``/``mean`` over absolute axes, ``flatten`` (from axis 1, in NCHW order),
  ``movedim``.

Layer kinds not listed, and parameter layers with more entries than these (such as a
convolution's groups), are refused (:func:`unsupported`), not guessed.

Everything is float32 (:data:`DTYPE`), deliberately: mlx-kfac accumulates its factors in
float32 whatever it is given, MLX's CPU convolutions raise on float64 when dilated, and
MLX's float64 ``exp``, ``sigmoid``, softmax and ``sin`` are only float32-accurate, so float64
would promise a precision that is not there. The conversion names the dtype because
``mx.array`` of a float64 ndarray silently becomes float32 without one (:func:`as_mlx`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from kfac_conformance.neutral.fixtures import StoredCase

DTYPE = mx.float32
# the parameter layers and the length of their specs (a longer one, e.g. with groups, is refused)
PARAMETRIC = {"linear": 4, "conv1d": 8, "conv2d": 8, "conv3d": 8, "embedding": 3}
ELEMENTWISE: dict[str, Callable[[mx.array], mx.array]] = {
    "tanh": mx.tanh,
    "sigmoid": mx.sigmoid,
    "relu": nn.relu,
}
STRUCTURAL = ("sum", "mean", "flatten", "movedim")
CONVOLUTIONS: dict[str, type[nn.Module]] = {
    "conv1d": nn.Conv1d,
    "conv2d": nn.Conv2d,
    "conv3d": nn.Conv3d,
}
SPATIAL_AXES = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def as_mlx(array: np.ndarray) -> mx.array:
    """``array`` in MLX: floating point as :data:`DTYPE` (named, never implied), integer
    labels as they are."""
    if np.issubdtype(array.dtype, np.floating):
        return mx.array(array, dtype=DTYPE)
    return mx.array(array)


def kernel_to_mlx(weight: np.ndarray) -> np.ndarray:
    """PyTorch's ``(out, in, k...)`` convolution kernel in MLX's ``(out, k..., in)`` layout."""
    return np.moveaxis(weight, 1, -1)


def unsupported(architecture: Sequence[Sequence]) -> str | None:
    """Why the network cannot be built in MLX here (``None``: it can)."""
    known = (*PARAMETRIC, *ELEMENTWISE, *STRUCTURAL)
    unknown = sorted({spec[0] for spec in architecture if spec[0] not in known})
    if unknown:
        return f"the MLX network builder does not know the layer kinds {unknown}"
    other = [list(s) for s in architecture if s[0] in PARAMETRIC and len(s) != PARAMETRIC[s[0]]]
    if other:
        return f"the MLX network builder does not know the layer specs {other} (other lengths)"
    if any(spec[0] == "embedding" for spec in architecture[1:]):
        # the stored indices are the network's input: an embedding further in would get floats
        return "the architecture language has an embedding only as the first layer"
    return None


class ChannelsFirst(nn.Module):
    """An MLX convolution (channels last) on PyTorch's channels-first tensors."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def __call__(self, x: mx.array) -> mx.array:
        return mx.moveaxis(self.conv(mx.moveaxis(x, 1, -1)), -1, 1)


class Function(nn.Module):
    """A layer without parameters."""

    def __init__(self, function: Callable[[mx.array], mx.array]) -> None:
        super().__init__()
        self.function = function

    def __call__(self, x: mx.array) -> mx.array:
        return self.function(x)


class Network(nn.Module):
    """The stored architecture; layer ``i`` is ``layers[i]``."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = layers

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


def _function(spec: Sequence) -> Callable[[mx.array], mx.array]:
    kind, *args = spec
    if kind in ELEMENTWISE:
        return ELEMENTWISE[kind]
    if kind == "sum":
        return lambda x: mx.sum(x, axis=tuple(args[0]))
    if kind == "mean":
        return lambda x: mx.mean(x, axis=tuple(args[0]))
    if kind == "flatten":
        return lambda x: x.reshape(x.shape[0], -1)
    if kind == "movedim":
        return lambda x: mx.moveaxis(x, args[0], args[1])
    raise ValueError(f"unknown layer kind {kind!r} in architecture spec {list(spec)}")


def _parametric(case: StoredCase, index: int, spec: Sequence) -> nn.Module:
    layer = str(index)
    weight, bias = case.parameter(layer, "weight"), case.parameter(layer, "bias")
    kind = spec[0]
    if kind == "embedding":
        module = nn.Embedding(spec[1], spec[2])
        module.weight = as_mlx(weight)
        return module
    if kind == "linear":
        _, d_in, d_out, _ = spec
        module = nn.Linear(d_in, d_out, bias=bias is not None)
        module.weight = as_mlx(weight)
        wrapped = module
    else:
        _, c_in, c_out, kernel, stride, padding, dilation, _ = spec
        module = CONVOLUTIONS[kind](
            c_in, c_out, kernel, stride, padding, dilation, bias=bias is not None
        )
        module.weight = as_mlx(kernel_to_mlx(weight))
        wrapped = ChannelsFirst(module)
    if bias is not None:
        module.bias = as_mlx(bias)
    return wrapped


def build(case: StoredCase) -> Network:
    """The case's network with its stored parameters."""
    reason = unsupported(case.architecture)
    if reason is not None:
        raise ValueError(f"case {case.id!r}: {reason}")
    return Network(
        [
            _parametric(case, index, spec) if spec[0] in PARAMETRIC else Function(_function(spec))
            for index, spec in enumerate(case.architecture)
        ]
    )


def module_paths(architecture: Sequence[Sequence]) -> dict[str, str]:
    """Each parameter layer's path in :class:`Network` (``named_modules`` spelling)."""
    return {
        str(index): f"layers.{index}" + (".conv" if spec[0] in CONVOLUTIONS else "")
        for index, spec in enumerate(architecture)
        if spec[0] in PARAMETRIC
    }
