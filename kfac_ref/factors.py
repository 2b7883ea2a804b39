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
