"""The container every KFAC implementation returns: one Kronecker-factored block per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

BiasMode = Literal["none", "separate", "joint"]
BIAS_MODES: tuple[str, ...] = ("none", "separate", "joint")


def joint_order(d_out: int, d_in_plus_one: int, device: torch.device | None = None) -> Tensor:
    """Indices that take the row-major flattening of ``[W | b]`` (rows ``(out, in + 1)``, the
    bias in column ``in`` of each row) to ``[W.flatten(), b]``."""
    index = torch.arange(d_out * d_in_plus_one, device=device).reshape(d_out, -1)
    return torch.cat([index[:, :-1].flatten(), index[:, -1]])


def store_contiguous(factors: object, names: tuple[str, ...]) -> None:
    """Replace each dense tensor field of the frozen ``factors`` by a contiguous one.

    A factor's strides are no part of its value, but ``torch.kron`` raises "view size is not
    compatible" when one operand is contiguous and the other is not (a transposed view ``A.T``
    beside a row-major ``B``; ``eigh``'s column-major basis beside a row-major one). Stored
    contiguous, every result compares whatever layout its implementation produced. Sparse and
    other layouts are left for the result's validation to name.
    """
    for name in names:
        tensor = getattr(factors, name)
        if isinstance(tensor, Tensor) and tensor.layout == torch.strided:
            object.__setattr__(factors, name, tensor.contiguous())


@dataclass(frozen=True)
class KroneckerFactors:
    """KFAC's block of one layer: ``A`` (input-based) and ``B`` (grad-output-based).

    The layer's parameters are its weight (``out x in``, or ``out x in x kh x kw`` for a
    convolution, flattened row-major as ``weight.flatten()``) and optionally its bias.
    ``bias`` says how the bias enters:

    - ``"none"``: the layer has no bias; ``A`` is ``in x in`` and the block is ``kron(B, A)``.
    - ``"separate"``: ``A`` is ``in x in``; the weight block is ``kron(B, A)``, the bias
      block is ``B`` and the weight-bias cross terms are zero.
    - ``"joint"``: the bias is the weight's extra column fed by a constant one, so ``A`` is
      ``(in + 1) x (in + 1)`` with the ones row/column last; ``kron(B, A)`` is over the
      row-major flattening of ``[W | b]`` and ``to_dense`` reorders it into ``[W.flatten(), b]``.

    Only the product is identifiable: ``(c A, B / c)`` is the same approximation.
    """

    A: Tensor
    B: Tensor
    bias: BiasMode = "none"

    def __post_init__(self) -> None:
        for name, factor in (("A", self.A), ("B", self.B)):
            if not isinstance(factor, Tensor):
                raise TypeError(
                    f"factor {name} must be a torch.Tensor, got {type(factor).__name__}"
                )
            if factor.ndim != 2 or factor.shape[0] != factor.shape[1]:
                raise ValueError(
                    f"factor {name} must be a square matrix, got shape {tuple(factor.shape)}"
                )
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        store_contiguous(self, ("A", "B"))

    def to_dense(self) -> Tensor:
        """The block over ``[weight.flatten(), bias]`` in ``named_parameters`` order."""
        weight_and_maybe_bias = torch.kron(self.B, self.A)
        if self.bias == "none":
            return weight_and_maybe_bias
        if self.bias == "separate":
            return torch.block_diag(weight_and_maybe_bias, self.B)
        order = joint_order(self.B.shape[0], self.A.shape[0], self.A.device)
        return weight_and_maybe_bias[order][:, order]

    def to(self, *args, **kwargs) -> KroneckerFactors:
        return KroneckerFactors(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs), self.bias)

    def scaled(self, factor: float) -> KroneckerFactors:
        """The block times ``factor`` (carried by ``B``, which the bias block shares)."""
        return KroneckerFactors(self.A, factor * self.B, self.bias)


@dataclass(frozen=True)
class EKFACFactors:
    r"""EKFAC's block of one layer (George et al. 2018): KFAC's eigenbasis, corrected scales.

    ``QA`` and ``QB`` are orthonormal eigenvector matrices of KFAC's ``A`` and ``B`` (same
    shapes and bias layout as in :class:`KroneckerFactors`); ``S`` (``dim B x dim A``) holds
    the corrected eigenvalues, so that over the row-major weight (or ``[W | b]`` for a joint
    bias) the block is

    .. math::  (Q_B \otimes Q_A)\,\mathrm{diag}(\mathrm{vec}_{\text{row}}(S))\,
               (Q_B \otimes Q_A)^\top .

    For ``bias="separate"`` the bias block is :math:`Q_B\,\mathrm{diag}(s_b)\,Q_B^\top` with
    ``S_bias`` = :math:`s_b` (``dim B``), and the weight-bias cross terms are zero.
    """

    QA: Tensor
    QB: Tensor
    S: Tensor
    bias: BiasMode = "none"
    S_bias: Tensor | None = None

    def __post_init__(self) -> None:
        for name, basis in (("QA", self.QA), ("QB", self.QB)):
            if not isinstance(basis, Tensor) or basis.ndim != 2 or basis.shape[0] != basis.shape[1]:
                raise ValueError(f"{name} must be a square matrix tensor")
        if not isinstance(self.S, Tensor) or tuple(self.S.shape) != (
            self.QB.shape[0],
            self.QA.shape[0],
        ):
            raise ValueError(
                f"S must be a tensor of shape (dim B, dim A) = "
                f"{(self.QB.shape[0], self.QA.shape[0])}"
            )
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        if (self.bias == "separate") != (self.S_bias is not None):
            raise ValueError("S_bias is required for bias='separate' and only then")
        if self.S_bias is not None and tuple(self.S_bias.shape) != (self.QB.shape[0],):
            raise ValueError(f"S_bias must have shape ({self.QB.shape[0]},)")
        store_contiguous(self, ("QA", "QB", "S", "S_bias"))

    def to_dense(self) -> Tensor:
        """The block over ``[weight.flatten(), bias]`` in ``named_parameters`` order."""
        basis = torch.kron(self.QB, self.QA)
        weight_and_maybe_bias = basis @ torch.diag(self.S.flatten()) @ basis.T
        if self.bias == "none":
            return weight_and_maybe_bias
        if self.bias == "separate":
            bias_block = self.QB @ torch.diag(self.S_bias) @ self.QB.T
            return torch.block_diag(weight_and_maybe_bias, bias_block)
        order = joint_order(self.QB.shape[0], self.QA.shape[0], self.QA.device)
        return weight_and_maybe_bias[order][:, order]

    def to(self, *args, **kwargs) -> EKFACFactors:
        moved = None if self.S_bias is None else self.S_bias.to(*args, **kwargs)
        return EKFACFactors(
            self.QA.to(*args, **kwargs),
            self.QB.to(*args, **kwargs),
            self.S.to(*args, **kwargs),
            self.bias,
            moved,
        )

    def scaled(self, factor: float) -> EKFACFactors:
        """The block times ``factor``."""
        S_bias = None if self.S_bias is None else factor * self.S_bias
        return EKFACFactors(self.QA, self.QB, factor * self.S, self.bias, S_bias)


@dataclass(frozen=True)
class GroupedFactors:
    r"""The block of a grouped convolution (``groups > 1``): one result per group.

    Group ``g`` is a convolution with ``C_in / groups`` input and ``C_out / groups`` output
    channels: weight rows ``g * C_out / groups`` onwards, input channels ``g * C_in / groups``
    onwards; ``groups[g]`` is its :class:`KroneckerFactors` (``A_g`` over its patch
    ``(C_in / groups, *kernel)``, ``B_g`` over its output channels) or :class:`EKFACFactors`,
    all of one type and one bias mode. The parameters of different groups never meet in KFAC,
    so the layer's block is block-diagonal over the groups. Over ``[weight.flatten(), bias]``
    (weight ``(C_out, C_in / groups, *kernel)``, row-major) group ``g``'s weight rows are the
    ``g``-th contiguous run of ``weight.numel() / groups`` rows and its bias rows the ``g``-th
    run of ``C_out / groups`` rows after the whole weight: :meth:`to_dense` places each group's
    own block (weight then bias, :meth:`KroneckerFactors.to_dense`) at those rows, so the
    layer's block keeps the order weight, then bias, and for a joint bias group ``g``'s
    weight-bias cross terms land between its weight rows and its bias rows.
    """

    groups: tuple[KroneckerFactors, ...] | tuple[EKFACFactors, ...]

    def __post_init__(self) -> None:
        groups = tuple(self.groups) if isinstance(self.groups, (list, tuple)) else None
        if not groups:
            raise ValueError("groups must be a non-empty tuple of per-group factors")
        kinds = {type(group) for group in groups}
        if len(kinds) != 1 or not kinds <= {KroneckerFactors, EKFACFactors}:
            raise TypeError(
                "groups must all be KroneckerFactors or all EKFACFactors, got "
                f"{sorted(kind.__name__ for kind in kinds)}"
            )
        if len({group.bias for group in groups}) != 1:
            raise ValueError(f"every group must have one bias mode, got {[g.bias for g in groups]}")
        object.__setattr__(self, "groups", groups)

    @property
    def bias(self) -> BiasMode:
        return self.groups[0].bias

    def parameter_indices(self) -> list[Tensor]:
        """Each group's rows of the layer's block over ``[weight.flatten(), bias]``."""
        sizes = [group_parameter_sizes(group) for group in self.groups]
        weight_total = sum(weight for weight, _ in sizes)
        indices, weight_start, bias_start = [], 0, weight_total
        for weight, bias in sizes:
            indices.append(
                torch.cat(
                    [
                        torch.arange(weight_start, weight_start + weight),
                        torch.arange(bias_start, bias_start + bias),
                    ]
                )
            )
            weight_start, bias_start = weight_start + weight, bias_start + bias
        return indices

    def to_dense(self) -> Tensor:
        """The block-diagonal block over ``[weight.flatten(), bias]`` (see the class)."""
        blocks = [group.to_dense() for group in self.groups]
        size = sum(block.shape[0] for block in blocks)
        dense = blocks[0].new_zeros(size, size)
        for index, block in zip(self.parameter_indices(), blocks, strict=True):
            index = index.to(dense.device)
            dense[index[:, None], index[None, :]] = block
        return dense

    def to(self, *args, **kwargs) -> GroupedFactors:
        return GroupedFactors(tuple(group.to(*args, **kwargs) for group in self.groups))

    def scaled(self, factor: float) -> GroupedFactors:
        """The block times ``factor``."""
        return GroupedFactors(tuple(group.scaled(factor) for group in self.groups))


def group_parameter_sizes(factors: KroneckerFactors | EKFACFactors) -> tuple[int, int]:
    """``(weight rows, bias rows)`` of one ungrouped result's block."""
    size_A, size_B = (
        (factors.QA.shape[0], factors.QB.shape[0])
        if isinstance(factors, EKFACFactors)
        else (factors.A.shape[0], factors.B.shape[0])
    )
    bias_rows = 0 if factors.bias == "none" else size_B
    return size_B * (size_A - (factors.bias == "joint")), bias_rows


def groups_of(
    factors: KroneckerFactors | EKFACFactors | GroupedFactors,
) -> tuple[KroneckerFactors, ...] | tuple[EKFACFactors, ...]:
    """The per-group results of a grouped layer, or the one result of any other layer."""
    return factors.groups if isinstance(factors, GroupedFactors) else (factors,)


def group_blocks(
    factors: KroneckerFactors | EKFACFactors | GroupedFactors, block: Tensor
) -> list[tuple[KroneckerFactors | EKFACFactors, Tensor]]:
    """Each group's result with its diagonal block of ``block`` (a dense block over the
    layer's ``[weight.flatten(), bias]``); ``[(factors, block)]`` for an ungrouped layer."""
    if not isinstance(factors, GroupedFactors):
        return [(factors, block)]
    return [
        (group, block[index[:, None].to(block.device), index[None, :].to(block.device)])
        for group, index in zip(factors.groups, factors.parameter_indices(), strict=True)
    ]
