r"""What a JAX candidate gives the runner: Kronecker factors per layer, in the suite's layout.

The layout is the PyTorch suite's (``kfac_ref.factors.KroneckerFactors``): a layer's weight is
flattened row-major in the PyTorch layout (``out x in``, or ``out x (c_in kh kw)``), its block
is :math:`B \otimes A` with ``A`` over the inputs and ``B`` over the outputs, and the bias is

- ``"joint"``: ``A`` has a constant one appended last, the block is over
  ``[weight.flatten(), bias]`` (see :func:`dense_block`);
- ``"none"``: the layer has no bias.

A candidate declares its scale :class:`~kfac_conformance.contract.conventions.Conventions`; the runner
converts its blocks to the tutorial's scale with :func:`kfac_conformance.contract.conventions.scale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.jax.stored import StoredCase

BIAS_MODES = ("joint", "none")
FISHER_TYPES = ("type-2", "mc", "empirical")
FLAVOURS = ("expand", "reduce")


@dataclass(frozen=True)
class Factors:
    """One layer's factors (float64 numpy arrays) and its bias mode."""

    A: np.ndarray
    B: np.ndarray
    bias: str

    def __post_init__(self) -> None:
        if self.bias not in BIAS_MODES:
            raise ValueError(f"bias must be one of {BIAS_MODES}, got {self.bias!r}")
        for name in ("A", "B"):
            matrix = getattr(self, name)
            if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
                raise ValueError(f"factor {name} must be a square matrix, got shape {matrix.shape}")


def dense_block(factors: Factors) -> np.ndarray:
    """``kron(B, A)`` over ``[weight.flatten(), bias]`` (the bias entries moved last)."""
    block = np.kron(factors.B, factors.A)
    if factors.bias == "none":
        return block
    # rows of [W | b] are (out, in + 1); the bias is column `in` of each row
    d_out = factors.B.shape[0]
    index = np.arange(block.shape[0]).reshape(d_out, -1)
    order = np.concatenate([index[:, :-1].ravel(), index[:, -1]])
    return block[np.ix_(order, order)]


class Refused(Exception):
    """The candidate does not offer what was asked (a limitation of its library)."""


class JaxCandidate(Protocol):
    name: str
    version: str | None
    conventions: Conventions

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        """Why the candidate does not offer this (``None``: it does)."""

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> dict[str, Factors]:
        """Factors of every parameter layer over all batches of ``case``, in float64; MC with
        ``mc_samples`` labels per datum drawn from ``seed``."""
