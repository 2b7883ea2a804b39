r"""The architecture language of :mod:`kfac_conformance.cases.architectures`, in JAX.

The network computes what the PyTorch ``nn.Sequential`` computes, on the same NCHW tensors,
with parameters in JAX's own layouts so that graph-matching libraries see the usual patterns:

- ``["linear", d_in, d_out, bias]``: :math:`y = x w + b` with ``w = W^T`` (``d_in x d_out``);
- ``["conv2d", ...]``: ``lax.conv_general_dilated`` on NHWC with an HWIO kernel
  (``w = W.transpose(2, 3, 1, 0)``), the input moved from NCHW and the output back;
- activations, ``sum``/``mean`` over axes, ``flatten`` (all but the batch axis, in NCHW order,
  as ``nn.Flatten``), ``movedim``.

``params`` is ``{layer: {"w": ..., "b": ...}}`` (``"b"`` only for layers with a bias).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kfac_conformance.neutral.fixtures import StoredCase

Params = dict[str, dict[str, jax.Array]]

_ACTIVATIONS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}
# torch weight layout -> JAX layout, per kind: (out, in) -> (in, out); OIHW -> HWIO
_TO_JAX = {"linear": (1, 0), "conv2d": (2, 3, 1, 0)}


def jax_params(case: StoredCase) -> Params:
    """The stored parameters, converted to the layouts :func:`apply` uses."""
    params: Params = {}
    for index, spec in enumerate(case.architecture):
        layer = str(index)
        if spec[0] not in _TO_JAX:
            continue
        weight = case.parameter(layer, "weight")
        params[layer] = {"w": jnp.asarray(np.transpose(weight, _TO_JAX[spec[0]]))}
        bias = case.parameter(layer, "bias")
        if bias is not None:
            params[layer]["b"] = jnp.asarray(bias)
    return params


def _linear(p: dict, x: jax.Array) -> jax.Array:
    y = x @ p["w"]
    return y + p["b"] if "b" in p else y


def _conv2d(spec: Sequence, p: dict, x: jax.Array) -> jax.Array:
    _, _, _, _, stride, padding, dilation, _ = spec
    y = lax.conv_general_dilated(
        jnp.transpose(x, (0, 2, 3, 1)),
        p["w"],
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if "b" in p:
        y = y + p["b"]
    return jnp.transpose(y, (0, 3, 1, 2))


def layer_function(spec: Sequence, layer: str) -> Callable[[Params, jax.Array], jax.Array]:
    kind, *args = spec
    if kind == "linear":
        return lambda params, x: _linear(params[layer], x)
    if kind == "conv2d":
        return lambda params, x: _conv2d(spec, params[layer], x)
    if kind in _ACTIVATIONS:
        return lambda params, x: _ACTIVATIONS[kind](x)
    if kind in ("sum", "mean"):
        reduce = jnp.sum if kind == "sum" else jnp.mean
        return lambda params, x: reduce(x, axis=tuple(args[0]))
    if kind == "flatten":
        return lambda params, x: x.reshape(x.shape[0], -1)
    if kind == "movedim":
        return lambda params, x: jnp.moveaxis(x, args[0], args[1])
    raise ValueError(f"unknown layer kind {kind!r} in architecture spec {list(spec)}")


def build(architecture: Sequence[Sequence]) -> Callable[[Params, jax.Array], jax.Array]:
    """``apply(params, X)``: the network's output on a batch ``X`` (NCHW for images)."""
    functions = [layer_function(spec, str(index)) for index, spec in enumerate(architecture)]

    def apply(params: Params, x: jax.Array) -> jax.Array:
        for function in functions:
            x = function(params, x)
        return x

    return apply
