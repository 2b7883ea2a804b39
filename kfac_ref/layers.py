r"""Per-layer factor functions, in a registry keyed by (layer type, flavour).

A layer with weight sharing sees ``S`` positions per datum (the leading shared axes of a
``Linear`` input, the output pixels of a ``Conv2d``). Write :math:`a_{n,s}` for the layer's
input at position ``s`` (a convolution's unfolded patch; with a joint bias, followed by a
one) and :math:`g_{n,s,v}` for the gradient of backpropagated vector ``v`` at the layer's
output. Both flavours (Eschenhagen et al. 2023) are

- expand: :math:`A = \frac{1}{NS}\sum_{n,s} a_{n,s}a_{n,s}^\top`,
  :math:`B = R\sum_{n,s,v} g_{n,s,v}g_{n,s,v}^\top`;
- reduce: :math:`A = \frac1N\sum_n \bar a_n\bar a_n^\top` with
  :math:`\bar a_n = \frac1S\sum_s a_{n,s}`, and
  :math:`B = R\sum_{n,v}\bar g_{n,v}\bar g_{n,v}^\top` with :math:`\bar g_{n,v} = \sum_s g_{n,s,v}`.

Without weight sharing (``S = 1``) both flavours are the classic KFAC of Martens & Grosse.
This module computes the *unnormalised* sums and their counts; the scaffold divides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

FLAVOURS: tuple[str, ...] = ("expand", "reduce")


def linear_positions(layer: nn.Linear, inputs: Tensor) -> Tensor:
    """``(N, S, d_in)``: every leading axis after the batch axis is a shared axis."""
    return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])


def linear_output_positions(layer: nn.Linear, grad_outputs: Tensor) -> Tensor:
    """``(V, N, S, d_out)`` from gradients ``(V, N, ..., d_out)`` at the layer's output."""
    return grad_outputs.reshape(*grad_outputs.shape[:2], -1, grad_outputs.shape[-1])


def conv2d_positions(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
    """``(N, S, C_in kh kw)``: the patches the kernel sees, one per output pixel.

    Unfolded with the layer's own kernel size, stride, padding and dilation; a patch is
    ordered ``(C_in, kh, kw)`` like ``weight[o].flatten()``.
    """
    patches = nn.functional.unfold(
        inputs,
        kernel_size=layer.kernel_size,
        dilation=layer.dilation,
        padding=layer.padding,
        stride=layer.stride,
    )
    return patches.transpose(1, 2)


def conv2d_output_positions(layer: nn.Conv2d, grad_outputs: Tensor) -> Tensor:
    """``(V, N, S, C_out)`` from gradients ``(V, N, C_out, H_out, W_out)``."""
    return grad_outputs.flatten(start_dim=3).transpose(2, 3)


def check_conv2d_supported(layer: nn.Conv2d) -> None:
    if layer.groups != 1:
        raise NotImplementedError(f"Conv2d with groups={layer.groups} is not supported (only 1)")
    if layer.padding_mode != "zeros":
        raise NotImplementedError(
            f"Conv2d with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')"
        )
    if isinstance(layer.padding, str):
        raise NotImplementedError(
            f"Conv2d with padding={layer.padding!r} is not supported; give explicit integers"
        )


def expand_input_sum(positions: Tensor) -> tuple[Tensor, int]:
    r""":math:`\sum_{n,s} a_{n,s}a_{n,s}^\top` and its count :math:`NS`."""
    flat = positions.reshape(-1, positions.shape[-1])
    return flat.T @ flat, flat.shape[0]


def expand_grad_sum(grad_positions: Tensor) -> Tensor:
    r""":math:`\sum_{n,s,v} g_{n,s,v}g_{n,s,v}^\top`."""
    flat = grad_positions.reshape(-1, grad_positions.shape[-1])
    return flat.T @ flat


def reduce_input_sum(positions: Tensor) -> tuple[Tensor, int]:
    r""":math:`\sum_n \bar a_n\bar a_n^\top` with :math:`\bar a_n = \frac1S\sum_s a_{n,s}`, count ``N``."""
    mean = positions.mean(dim=1)
    return mean.T @ mean, mean.shape[0]


def reduce_grad_sum(grad_positions: Tensor) -> Tensor:
    r""":math:`\sum_{n,v}\bar g_{n,v}\bar g_{n,v}^\top` with :math:`\bar g_{n,v} = \sum_s g_{n,s,v}`."""
    total = grad_positions.sum(dim=2).reshape(-1, grad_positions.shape[-1])
    return total.T @ total


class LayerRule(NamedTuple):
    """How one (layer type, flavour) pair turns inputs and output gradients into sums."""

    input_positions: Callable[[nn.Module, Tensor], Tensor]
    output_positions: Callable[[nn.Module, Tensor], Tensor]
    input_sum: Callable[[Tensor], tuple[Tensor, int]]
    grad_sum: Callable[[Tensor], Tensor]
    check_supported: Callable[[nn.Module], None] = lambda layer: None


_SUMS = {
    "expand": (expand_input_sum, expand_grad_sum),
    "reduce": (reduce_input_sum, reduce_grad_sum),
}

REGISTRY: dict[tuple[type[nn.Module], str], LayerRule] = {}
for _flavour, (_input_sum, _grad_sum) in _SUMS.items():
    REGISTRY[(nn.Linear, _flavour)] = LayerRule(
        linear_positions, linear_output_positions, _input_sum, _grad_sum
    )
    REGISTRY[(nn.Conv2d, _flavour)] = LayerRule(
        conv2d_positions, conv2d_output_positions, _input_sum, _grad_sum, check_conv2d_supported
    )

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def rule_for(layer: nn.Module, flavour: str) -> LayerRule:
    """The registry entry for ``layer``; raises naming the unsupported layer or flavour."""
    if flavour not in FLAVOURS:
        raise ValueError(f"kfac_approx must be one of {FLAVOURS}, got {flavour!r}")
    rule = REGISTRY.get((type(layer), flavour))
    if rule is None:
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)
        raise NotImplementedError(
            f"layer type {type(layer).__name__} is not supported; supported: {names}"
        )
    rule.check_supported(layer)
    return rule


def with_ones(positions: Tensor) -> Tensor:
    """Append the constant input that multiplies a joint bias."""
    return torch.cat([positions, positions.new_ones((*positions.shape[:-1], 1))], dim=-1)
