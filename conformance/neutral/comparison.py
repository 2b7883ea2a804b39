r"""Comparing a candidate's blocks with expected ones, in numpy: the error, the tolerance and a
diagnosis of a mismatch.

The same measure and bounds as the PyTorch suite (``kfac_conformance.comparison.blocks``): a
layer passes when :math:`\|K/s - E\|_F / \|E\|_F \le` tol, ``K`` the candidate's dense block,
``s`` its declared convention's scale, ``E`` the expected block restricted to the entries KFAC
approximates (with a separate bias, no weight-bias cross terms), and tol the round-off bound
of the candidate's dtype (:func:`tolerance`: ``1e-10`` for float64, ``1e-4`` for float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kfac_conformance.comparison.tolerances import (
    float32_round_off,
    layer_pattern,
    name_factor,
    round_off_tolerance,
)
from kfac_conformance.neutral.factors import (
    EigenFactors,
    Factors,
    dense_block,
    kfac_pattern,
    output_size,
)


def tolerance(dtype: object) -> float:
    """The relative Frobenius error allowed for answers computed in ``dtype`` (a name such as
    ``"float32"``, or a numpy dtype)."""
    return round_off_tolerance(dtype)


def relative_error(candidate: np.ndarray, expected: np.ndarray) -> float:
    """``||candidate - expected||_F / ||expected||_F`` in float64 (absolute when ``expected``
    is zero)."""
    candidate, expected = np.asarray(candidate, np.float64), np.asarray(expected, np.float64)
    scale = float(np.linalg.norm(expected))
    difference = float(np.linalg.norm(candidate - expected))
    return difference / scale if scale > 0 else difference


def fitted_factor(candidate: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """``(c, r)``: the least-squares ``c`` with ``candidate ≈ c * expected`` and the relative
    error ``r`` of ``candidate / c`` (``(0, inf)`` when ``c`` is 0)."""
    candidate, expected = np.asarray(candidate, np.float64), np.asarray(expected, np.float64)
    factor = float((candidate * expected).sum() / max(float((expected * expected).sum()), 1e-300))
    if factor == 0:
        return 0.0, float("inf")
    return factor, relative_error(candidate / factor, expected)


def restricted(expected: np.ndarray, factors: Factors | EigenFactors) -> np.ndarray:
    """``expected`` with the entries the candidate's bias mode does not approximate set to 0."""
    pattern = kfac_pattern(expected.shape[0], factors.bias, output_size(factors))
    return expected if pattern is None else np.where(pattern, expected, 0.0)


def layer_error(factors: Factors | EigenFactors, scale: float, expected: np.ndarray) -> float:
    """The relative error of one layer's block over its declared scale (inf for a wrong shape)."""
    block = dense_block(factors) / scale
    if block.shape != expected.shape:
        return float("inf")
    return relative_error(block, restricted(expected, factors))


def diagnose(
    factors: Factors | EigenFactors,
    scale: float,
    expected: np.ndarray,
    tolerance: float,
    alternative: tuple[str, np.ndarray] | None = None,
    quantities: Mapping[str, float] | None = None,
) -> str | None:
    """The likely cause of a mismatch, as ``kfac_conformance.comparison.blocks.diagnose`` words
    it: NaNs, a wrong shape, a constant factor (named through the problem's counts), swapped
    Kronecker order, the other curvature, float32 round-off under a float64 bound."""
    candidate = dense_block(factors) / scale
    if not np.isfinite(candidate).all():
        return "the block has NaN or inf entries"
    if candidate.shape != expected.shape:
        return f"block shape {candidate.shape} differs from the expected {expected.shape}"
    target = restricted(expected, factors)
    factor, residual = fitted_factor(candidate, target)
    if factor != 0 and residual <= tolerance:
        named = name_factor(factor, quantities or {})
        explanation = f" = {named}" if named else ""
        return f"off by a constant factor x {factor:.6g}{explanation}: a reduction or convention factor?"
    if isinstance(factors, Factors) and factors.A.shape == factors.B.shape:
        swapped = dense_block(Factors(factors.B, factors.A, factors.bias)) / scale
        if relative_error(swapped, target) <= tolerance:
            return "Kronecker order swapped: kron(A, B) matches, i.e. column-major flattening or A and B exchanged"
    if alternative is not None:
        name, other = alternative
        if relative_error(candidate, restricted(other, factors)) <= tolerance:
            return f"equals the {name} block instead"
    return float32_round_off(relative_error(candidate, target), tolerance)


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing every compared layer: the worst error and, when a layer is
    wrong, the first wrong one with its error and diagnosis."""

    worst: float
    wrong_layer: str | None = None
    wrong_error: float | None = None
    diagnosis: str | None = None


def compare_layers(
    result: Mapping[str, Factors | EigenFactors],
    scale: float,
    expected: Mapping[str, np.ndarray],
    layers: Sequence[str],
    tolerance: float,
    quantities: Mapping[str, float],
    shared_positions: Mapping[str, int],
    alternative: tuple[str, Mapping[str, np.ndarray]] | None = None,
) -> Comparison:
    """Compare ``result[layer] / scale`` with ``expected[layer]`` on ``layers``; diagnose the
    first wrong layer, and say which layers are wrong when only some are."""
    errors = {layer: layer_error(result[layer], scale, expected[layer]) for layer in layers}
    worst = max(errors.values()) if errors else 0.0
    wrong = [layer for layer in layers if not errors[layer] <= tolerance]
    if not wrong:
        return Comparison(worst)
    layer = wrong[0]
    diagnosis = diagnose(
        result[layer],
        scale,
        expected[layer],
        tolerance,
        (alternative[0], alternative[1][layer]) if alternative else None,
        {**quantities, "S": shared_positions.get(layer, 1)},
    )
    pattern = layer_pattern(errors, tolerance, shared_positions)
    parts = "; ".join(part for part in (diagnosis, pattern) if part) or None
    return Comparison(worst, layer, errors[layer], parts)
