"""The container every KFAC implementation returns: one Kronecker-factored block per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

BiasMode = Literal["none", "separate", "joint"]
BIAS_MODES: tuple[str, ...] = ("none", "separate", "joint")


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

    def to_dense(self) -> Tensor:
        """The block over ``[weight.flatten(), bias]`` in ``named_parameters`` order."""
        weight_and_maybe_bias = torch.kron(self.B, self.A)
        if self.bias == "none":
            return weight_and_maybe_bias
        if self.bias == "separate":
            return torch.block_diag(weight_and_maybe_bias, self.B)
        # joint: rows of [W | b] are (out, in + 1); the bias is column `in` of each row.
        d_out, d_in_plus_one = self.B.shape[0], self.A.shape[0]
        index = torch.arange(d_out * d_in_plus_one, device=self.A.device).reshape(d_out, -1)
        order = torch.cat([index[:, :-1].flatten(), index[:, -1]])
        return weight_and_maybe_bias[order][:, order]

    def to(self, *args, **kwargs) -> KroneckerFactors:
        return KroneckerFactors(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs), self.bias)
