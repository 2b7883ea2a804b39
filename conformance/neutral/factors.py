r"""What a framework's candidate returns for one layer, as numpy arrays, and its dense block.

The layout is the PyTorch suite's (``kfac_ref.factors``): a layer's weight is flattened
row-major in the PyTorch layout (``out x in``, or ``out x (c_in kh kw)`` for a convolution),
its block is :math:`B \otimes A` with ``A`` over the inputs and ``B`` over the outputs, and the
bias (``bias``) is

- ``"none"``: the layer has no bias; the block is ``kron(B, A)``;
- ``"separate"``: the block is ``block_diag(kron(B, A), B)`` (no weight-bias cross terms);
- ``"joint"``: ``A`` has the constant one appended last (``(in + 1) x (in + 1)``), so
  ``kron(B, A)`` is over the row-major ``[W | b]``, which interleaves each output's bias after
  its weights; :func:`joint_order` is the permutation to ``[W.flatten(), b]``.

EKFAC (:class:`EigenFactors`) has the same three modes, with
:math:`(Q_B \otimes Q_A)\,\mathrm{diag}(\mathrm{vec}_{\text{row}} S)\,(Q_B \otimes Q_A)^\top`
in place of ``kron(B, A)`` and :math:`Q_B\,\mathrm{diag}(s_b)\,Q_B^\top` as a separate bias block.

A grouped convolution (:class:`GroupedFactors`) has one result per group; its block is
block-diagonal over the groups, group ``g``'s weight rows the ``g``-th run of
``weight.size / groups`` rows and its bias rows the ``g``-th run of ``C_out / groups`` rows
after the whole weight (as :class:`kfac_ref.factors.GroupedFactors`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BIAS_MODES = ("none", "separate", "joint")


def _as_array(name: str, value: object, ndim: int) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _square(name: str, value: object) -> np.ndarray:
    array = _as_array(name, value, 2)
    if array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {array.shape}")
    return array


def _check_bias(bias: str) -> None:
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {BIAS_MODES}, got {bias!r}")


def joint_order(d_out: int, d_in_plus_one: int) -> np.ndarray:
    """Indices that take the row-major flattening of ``[W | b]`` (rows ``(out, in + 1)``, the
    bias in column ``in`` of each row) to ``[W.flatten(), b]``: ``block[order][:, order]``.

    Entry ``o * in + i`` of the result is ``o * (in + 1) + i`` (weight ``W[o, i]``) and entry
    ``out * in + o`` is ``o * (in + 1) + in`` (bias ``b[o]``).
    """
    index = np.arange(d_out * d_in_plus_one).reshape(d_out, d_in_plus_one)
    return np.concatenate([index[:, :-1].ravel(), index[:, -1]])


def _arrange(
    weight_part: np.ndarray, bias_block: np.ndarray | None, bias: str, d_out: int
) -> np.ndarray:
    """The block over ``[W.flatten(), b]`` from the product over the weight (or ``[W | b]``)."""
    if bias == "none":
        return weight_part
    if bias == "separate":
        size, extra = weight_part.shape[0], bias_block.shape[0]
        block = np.zeros((size + extra, size + extra), dtype=np.float64)
        block[:size, :size] = weight_part
        block[size:, size:] = bias_block
        return block
    order = joint_order(d_out, weight_part.shape[0] // d_out)
    return weight_part[np.ix_(order, order)]


@dataclass(frozen=True)
class Factors:
    """One layer's KFAC: ``A`` (input side), ``B`` (output side) and the bias mode.

    Any array numpy can read is accepted (and kept as a numpy array); its dtype is the
    candidate's, and comparisons are made in float64.
    """

    A: np.ndarray
    B: np.ndarray
    bias: str = "none"

    def __post_init__(self) -> None:
        _check_bias(self.bias)
        object.__setattr__(self, "A", _square("factor A", self.A))
        object.__setattr__(self, "B", _square("factor B", self.B))


@dataclass(frozen=True)
class EigenFactors:
    """One layer's EKFAC: eigenbases ``QA``, ``QB`` of KFAC's ``A`` and ``B``, corrected
    eigenvalues ``S`` (``dim B x dim A``) and, for a separate bias, ``S_bias`` (``dim B``)."""

    QA: np.ndarray
    QB: np.ndarray
    S: np.ndarray
    bias: str = "none"
    S_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_bias(self.bias)
        object.__setattr__(self, "QA", _square("QA", self.QA))
        object.__setattr__(self, "QB", _square("QB", self.QB))
        object.__setattr__(self, "S", _as_array("S", self.S, 2))
        expected = (self.QB.shape[0], self.QA.shape[0])
        if self.S.shape != expected:
            raise ValueError(f"S must have shape (dim B, dim A) = {expected}, got {self.S.shape}")
        if (self.bias == "separate") != (self.S_bias is not None):
            raise ValueError("S_bias is required for bias='separate' and only then")
        if self.S_bias is not None:
            object.__setattr__(self, "S_bias", _as_array("S_bias", self.S_bias, 1))
            if self.S_bias.shape != (self.QB.shape[0],):
                raise ValueError(
                    f"S_bias must have shape ({self.QB.shape[0]},), got {self.S_bias.shape}"
                )


@dataclass(frozen=True)
class GroupedFactors:
    """A grouped convolution's result: one :class:`Factors` (or :class:`EigenFactors`) per
    group, all of one bias mode."""

    groups: tuple

    def __post_init__(self) -> None:
        if not self.groups or len({group.bias for group in self.groups}) != 1:
            raise ValueError("groups must be a non-empty tuple of results of one bias mode")

    @property
    def bias(self) -> str:
        return self.groups[0].bias


def per_group(factors, change):
    """``change(factors)``, or a grouped layer's :class:`GroupedFactors` of ``change`` of
    every group."""
    if isinstance(factors, GroupedFactors):
        return GroupedFactors(tuple(change(group) for group in factors.groups))
    return change(factors)


def dense_block(factors: Factors | EigenFactors | GroupedFactors) -> np.ndarray:
    """The layer's block over ``[weight.flatten(), bias]`` in float64."""
    if isinstance(factors, GroupedFactors):
        return _block_diagonal_over_groups([dense_block(group) for group in factors.groups], [
            0 if factors.bias == "none" else output_size(group) for group in factors.groups
        ])  # fmt: skip
    if isinstance(factors, EigenFactors):
        QA, QB = factors.QA.astype(np.float64), factors.QB.astype(np.float64)
        basis = np.kron(QB, QA)
        weight_part = (basis * factors.S.astype(np.float64).ravel()) @ basis.T
        bias_block = None
        if factors.S_bias is not None:
            bias_block = (QB * factors.S_bias.astype(np.float64)) @ QB.T
        return _arrange(weight_part, bias_block, factors.bias, QB.shape[0])
    A, B = factors.A.astype(np.float64), factors.B.astype(np.float64)
    return _arrange(np.kron(B, A), B, factors.bias, B.shape[0])


def _block_diagonal_over_groups(blocks: list[np.ndarray], bias_rows: list[int]) -> np.ndarray:
    weight_rows = [block.shape[0] - rows for block, rows in zip(blocks, bias_rows, strict=True)]
    size = sum(block.shape[0] for block in blocks)
    dense = np.zeros((size, size))
    weight_start, bias_start = 0, sum(weight_rows)
    for block, weight, bias in zip(blocks, weight_rows, bias_rows, strict=True):
        index = np.concatenate(
            [
                np.arange(weight_start, weight_start + weight),
                np.arange(bias_start, bias_start + bias),
            ]
        )
        dense[np.ix_(index, index)] = block
        weight_start, bias_start = weight_start + weight, bias_start + bias
    return dense


def kfac_pattern(block_size: int, bias: str, d_out: int) -> np.ndarray | None:
    """The entries KFAC approximates: all (``None``), or for a separate bias the weight-weight
    and bias-bias sub-blocks (the bias is the last ``d_out`` parameters)."""
    if bias != "separate":
        return None
    weight = block_size - d_out
    pattern = np.zeros((block_size, block_size), dtype=bool)
    pattern[:weight, :weight] = True
    pattern[weight:, weight:] = True
    return pattern


def output_size(factors: Factors | EigenFactors | GroupedFactors) -> int:
    """The layer's output channels (a grouped convolution's: every group's)."""
    if isinstance(factors, GroupedFactors):
        return sum(output_size(group) for group in factors.groups)
    return (factors.QB if isinstance(factors, EigenFactors) else factors.B).shape[0]
