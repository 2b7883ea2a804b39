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

A grouped convolution (``groups = G > 1``) is ``G`` convolutions side by side: group ``g``
sees input channels :math:`\mathcal I_g = [gC_{in}/G, (g+1)C_{in}/G)` and produces output
channels :math:`\mathcal O_g = [gC_{out}/G, (g+1)C_{out}/G)`, with weight rows
:math:`\mathcal O_g`. Its patch :math:`a^{(g)}_{n,s}` is the part of :math:`a_{n,s}` over the
channels :math:`\mathcal I_g` (ordered ``(C_in/G, *kernel)`` like ``weight[o].flatten()``,
with a joint bias followed by its own one) and :math:`g^{(g)}_{n,s,v}` the part of
:math:`g_{n,s,v}` over :math:`\mathcal O_g`. KFAC treats the groups as separate layers:
:math:`(A_g, B_g)` are the formulas above on :math:`a^{(g)}` and :math:`g^{(g)}` (same
``S``, ``N`` and ``R``), and the layer's block is block-diagonal over the groups
(:class:`kfac_ref.factors.GroupedFactors`). The positions then carry a group axis,
``(N, S, G, d_g)`` and ``(V, N, S, G, d_g)``, and every sum is taken per group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors

FLAVOURS: tuple[str, ...] = ("expand", "reduce")
FactorsT = TypeVar("FactorsT", KroneckerFactors, EKFACFactors, GroupedFactors)


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
    of the flattened kernel shape ``(C_in, k_1, ..., k_d)`` (all input channels, also of a
    grouped layer), with the layer's own stride, padding and dilation.
    """
    patch_shape = (layer.in_channels, *layer.kernel_size)
    patch_size = math.prod(patch_shape)
    unit_kernels = torch.eye(patch_size, dtype=inputs.dtype, device=inputs.device).reshape(
        patch_size, *patch_shape
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


def split_groups(
    positions: Callable[[nn.Module, Tensor], Tensor],
) -> Callable[[nn.Module, Tensor], Tensor]:
    """``positions`` of a grouped layer with the feature axis split into ``(G, d / G)``: the
    channels are the outermost axis of a patch and of an output, so each group's part is
    contiguous."""

    def grouped(layer: nn.Module, tensor: Tensor) -> Tensor:
        found = positions(layer, tensor)
        return found.reshape(*found.shape[:-1], layer.groups, -1)

    return grouped


def check_conv_supported(layer: nn.Module) -> None:
    kind = type(layer).__name__
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


def outer_sum(rows: Tensor) -> Tensor:
    """``sum_m x_m x_m^T`` over the first axis of ``(M, d)`` rows, or per group of
    ``(M, G, d)`` rows as ``(G, d, d)``."""
    if rows.ndim == 2:
        return rows.T @ rows
    return torch.einsum("mgi,mgj->gij", rows, rows)


def expand_input_sum(positions: Tensor) -> tuple[Tensor, int]:
    r""":math:`\sum_{n,s} a_{n,s}a_{n,s}^\top` and its count :math:`NS`."""
    flat = positions.flatten(end_dim=1)
    return outer_sum(flat), flat.shape[0]


def expand_grad_sum(grad_positions: Tensor) -> Tensor:
    r""":math:`\sum_{n,s,v} g_{n,s,v}g_{n,s,v}^\top`."""
    return outer_sum(grad_positions.flatten(end_dim=2))


def reduce_input_sum(positions: Tensor) -> tuple[Tensor, int]:
    r""":math:`\sum_n \bar a_n\bar a_n^\top` with :math:`\bar a_n = \frac1S\sum_s a_{n,s}`, count ``N``."""
    mean = positions.mean(dim=1)
    return outer_sum(mean), mean.shape[0]


def reduce_grad_sum(grad_positions: Tensor) -> Tensor:
    r""":math:`\sum_{n,v}\bar g_{n,v}\bar g_{n,v}^\top` with :math:`\bar g_{n,v} = \sum_s g_{n,s,v}`."""
    return outer_sum(grad_positions.sum(dim=2).flatten(end_dim=1))


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

# convolutions with groups > 1: the same sums per group (module docstring)
GROUPED_REGISTRY: dict[tuple[type[nn.Module], str], LayerRule] = {
    key: rule._replace(
        input_positions=split_groups(rule.input_positions),
        output_positions=split_groups(rule.output_positions),
    )
    for key, rule in REGISTRY.items()
    if key[0] in _CONVOLUTIONS
}

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
    registry = GROUPED_REGISTRY if getattr(layer, "groups", 1) > 1 else REGISTRY
    rule = registry.get((type(layer), flavour))
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
    """The size of the output-gradient factor: the weight's rows (a group's, for a grouped
    convolution), or its columns when the weight is transposed (``Embedding``: its ``dim``)."""
    if rule.transposed_weight:
        return layer.weight.shape[1]
    return layer.weight.shape[0] // getattr(layer, "groups", 1)


def kronecker_result(A: Tensor, B: Tensor, bias: str) -> KroneckerFactors | GroupedFactors:
    """The contract's result from factors, or from factors stacked over a leading group axis
    (a grouped convolution's, ``A`` of shape ``(G, d, d)``): then one result per group."""
    if A.ndim == 2:
        return KroneckerFactors(A, B, bias)
    return GroupedFactors(
        tuple(KroneckerFactors(A_g, B_g, bias) for A_g, B_g in zip(A, B, strict=True))
    )


def ekfac_result(
    QA: Tensor, QB: Tensor, S: Tensor, bias: str, S_bias: Tensor | None
) -> EKFACFactors | GroupedFactors:
    """:func:`kronecker_result` for EKFAC's bases and eigenvalues."""
    if QA.ndim == 2:
        return EKFACFactors(QA, QB, S, bias, S_bias)
    per_group_bias = [None] * len(QA) if S_bias is None else list(S_bias)
    return GroupedFactors(
        tuple(
            EKFACFactors(*group, bias, s_b)
            for *group, s_b in zip(QA, QB, S, per_group_bias, strict=True)
        )
    )


def in_weight_order(rule: LayerRule, factors: FactorsT) -> FactorsT:
    r"""``factors`` (``A`` from the inputs, ``B`` from the output gradients) as the block over
    ``weight.flatten()``: unchanged, or for a transposed weight
    :math:`A\otimes B = K(B\otimes A)K^\top` with the commutation matrix ``K``, i.e. the roles
    swapped (and EKFAC's ``S`` transposed, since :math:`K\,\mathrm{vec}(S) = \mathrm{vec}(S^\top)`)."""
    if not rule.transposed_weight:
        return factors
    if isinstance(factors, GroupedFactors):
        raise NotImplementedError("a transposed weight has no groups")
    if isinstance(factors, KroneckerFactors):
        return KroneckerFactors(factors.B, factors.A, factors.bias)
    return EKFACFactors(factors.QB, factors.QA, factors.S.T, factors.bias, factors.S_bias)
