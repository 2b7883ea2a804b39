r"""Per-layer factor functions, in a registry keyed by (layer type, flavour).

A layer with weight sharing sees ``S`` positions per datum (the leading shared axes of a
``Linear`` or ``Embedding`` input, the output positions of a ``Conv1d``, ``Conv2d`` or
``Conv3d``). Write :math:`a_{n,s}` for the layer's
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

An ``Embedding`` is a bias-free ``Linear`` layer on one-hot inputs: :math:`a_{n,s}` is the
one-hot vector of the index at position ``s``. Its weight (``num_embeddings x dim``) is the
*transpose* of that ``Linear`` layer's, so over ``weight.flatten()`` its block is
:math:`A\otimes B` with the factors above; :func:`in_weight_order` returns it as the
contract's ``kron(B, A)`` by swapping the roles (``A`` the ``dim x dim`` output-gradient
factor, ``B`` the one-hot factor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from kfac_ref.factors import EKFACFactors, KroneckerFactors

FLAVOURS: tuple[str, ...] = ("expand", "reduce")
FactorsT = TypeVar("FactorsT", KroneckerFactors, EKFACFactors)


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


_CONVOLUTIONS = {
    nn.Conv1d: nn.functional.conv1d,
    nn.Conv2d: nn.functional.conv2d,
    nn.Conv3d: nn.functional.conv3d,
}


def conv_nd_positions(layer: nn.Conv1d | nn.Conv3d, inputs: Tensor) -> Tensor:
    """``(N, S, C_in k_1 ... k_d)``: the patches of a 1-D or 3-D convolution, one per output
    position, ordered ``(C_in, k_1, ..., k_d)`` like ``weight[o].flatten()``.

    Patch entry ``j`` is the output of a convolution whose kernel is the ``j``-th unit vector
    of the flattened kernel shape, with the layer's own stride, padding and dilation.
    """
    patch_size = layer.weight[0].numel()
    unit_kernels = torch.eye(patch_size, dtype=inputs.dtype, device=inputs.device).reshape(
        patch_size, *layer.weight.shape[1:]
    )
    patches = _CONVOLUTIONS[type(layer)](
        inputs,
        unit_kernels,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
    )
    return patches.flatten(start_dim=2).transpose(1, 2)


def conv_output_positions(layer: nn.Module, grad_outputs: Tensor) -> Tensor:
    """``(V, N, S, C_out)`` from gradients ``(V, N, C_out, *spatial)`` of any convolution."""
    return grad_outputs.flatten(start_dim=3).transpose(2, 3)


def embedding_positions(layer: nn.Embedding, inputs: Tensor) -> Tensor:
    """``(N, S, num_embeddings)``: the one-hot vector of every index; every axis of the index
    tensor after the batch axis is a shared axis."""
    one_hot = nn.functional.one_hot(inputs, layer.num_embeddings).to(layer.weight.dtype)
    return one_hot.reshape(inputs.shape[0], -1, layer.num_embeddings)


def check_conv_supported(layer: nn.Module) -> None:
    kind = type(layer).__name__
    if layer.groups != 1:
        raise NotImplementedError(f"{kind} with groups={layer.groups} is not supported (only 1)")
    if layer.padding_mode != "zeros":
        raise NotImplementedError(
            f"{kind} with padding_mode={layer.padding_mode!r} is not supported (only 'zeros')"
        )
    if isinstance(layer.padding, str):
        raise NotImplementedError(
            f"{kind} with padding={layer.padding!r} is not supported; give explicit integers"
        )


def check_embedding_supported(layer: nn.Embedding) -> None:
    # each of these makes the gradient other than that of a Linear layer on one-hot inputs
    unsupported = {
        "padding_idx": layer.padding_idx is not None,
        "max_norm": layer.max_norm is not None,
        "scale_grad_by_freq": layer.scale_grad_by_freq,
        "sparse": layer.sparse,
    }
    named = [name for name, present in unsupported.items() if present]
    if named:
        raise NotImplementedError(f"Embedding with {', '.join(named)} is not supported")


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
    # the weight is (inputs x outputs), the transpose of Linear's (nn.Embedding)
    transposed_weight: bool = False


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
        conv2d_positions, conv_output_positions, _input_sum, _grad_sum, check_conv_supported
    )
    for _conv in (nn.Conv1d, nn.Conv3d):
        REGISTRY[(_conv, _flavour)] = LayerRule(
            conv_nd_positions, conv_output_positions, _input_sum, _grad_sum, check_conv_supported
        )
    REGISTRY[(nn.Embedding, _flavour)] = LayerRule(
        embedding_positions,
        linear_output_positions,
        _input_sum,
        _grad_sum,
        check_embedding_supported,
        transposed_weight=True,
    )

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Embedding,
)


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


def output_features(layer: nn.Module, rule: LayerRule) -> int:
    """The size of the output-gradient factor: the weight's rows, or its columns when the
    weight is transposed (``Embedding``: its ``dim``)."""
    return layer.weight.shape[1] if rule.transposed_weight else layer.weight.shape[0]


def in_weight_order(rule: LayerRule, factors: FactorsT) -> FactorsT:
    r"""``factors`` (``A`` from the inputs, ``B`` from the output gradients) as the block over
    ``weight.flatten()``: unchanged, or for a transposed weight
    :math:`A\otimes B = K(B\otimes A)K^\top` with the commutation matrix ``K``, i.e. the roles
    swapped (and EKFAC's ``S`` transposed, since :math:`K\,\mathrm{vec}(S) = \mathrm{vec}(S^\top)`)."""
    if not rule.transposed_weight:
        return factors
    if isinstance(factors, KroneckerFactors):
        return KroneckerFactors(factors.B, factors.A, factors.bias)
    return EKFACFactors(factors.QB, factors.QA, factors.S.T, factors.bias, factors.S_bias)
