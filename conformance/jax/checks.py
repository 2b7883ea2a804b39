r"""The checks on stored cases, in numpy: exactness (compare, diagnose a mismatch) and the
statistics of ``mc/unbiased``.

Same check ids, tolerances (:mod:`kfac_conformance.comparison.tolerances`) and scale conversion
(:func:`kfac_conformance.contract.conventions.scale`) as the PyTorch suite's
``kfac_conformance.checks.exactness``: where a case's ``exact`` says KFAC of a kind equals the
exact block, the candidate's block divided by its declared scale must match the stored block
to round-off, :math:`\|K/s - E\|_F / \|E\|_F \le` tol (``1e-10`` in float64). With a joint bias
the whole block is compared (kfac-jax's only bias mode); the suite's separate-bias mode has no
counterpart here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kfac_conformance.checks.significance import Test, t_test
from kfac_conformance.comparison.tolerances import layer_pattern, name_factor
from kfac_conformance.jax.candidate import Factors, dense_block

# exactness/<fisher type>-<flavour> compares with this stored block; the other is a hypothesis
CURVATURE = {"type-2": ("ggn", "empirical"), "empirical": ("empirical", "ggn")}
NAMES = {"ggn": "GGN", "empirical": "empirical Fisher"}
EXACTNESS_CHECKS = tuple(
    (f"exactness/{fisher_type}-{flavour}", fisher_type, flavour)
    for fisher_type in ("type-2", "empirical")
    for flavour in ("expand", "reduce")
)


def relative_error(candidate: np.ndarray, exact: np.ndarray) -> float:
    """``||candidate - exact||_F / ||exact||_F`` (absolute when ``exact`` is zero)."""
    scale = float(np.linalg.norm(exact))
    difference = float(np.linalg.norm(candidate - exact))
    return difference / scale if scale > 0 else difference


@dataclass(frozen=True)
class Mismatch:
    layer: str
    error: float
    diagnosis: str | None


def diagnose(
    factors: Factors,
    scale: float,
    exact: np.ndarray,
    tolerance: float,
    alternative: tuple[str, np.ndarray] | None,
    quantities: Mapping[str, float],
) -> str | None:
    """The hypotheses of ``kfac_conformance.comparison.blocks.diagnose`` that apply to a joint or absent
    bias: a constant factor (named through the problem's counts), swapped Kronecker order
    (where A and B have one shape, also with a joint bias), the other curvature, NaNs."""
    candidate = dense_block(factors) / scale
    if not np.isfinite(candidate).all():
        return "the block has NaN or inf entries"
    if candidate.shape != exact.shape:
        return f"block shape {candidate.shape} differs from the exact {exact.shape}"
    factor = float((candidate * exact).sum() / max(float((exact * exact).sum()), 1e-300))
    if factor != 0 and relative_error(candidate / factor, exact) <= tolerance:
        named = name_factor(factor, quantities)
        explanation = f" = {named}" if named else ""
        return f"off by a constant factor x {factor:.6g}{explanation}: a reduction or convention factor?"
    if factors.A.shape == factors.B.shape:
        swapped = dense_block(Factors(factors.B, factors.A, factors.bias)) / scale
        if relative_error(swapped, exact) <= tolerance:
            return "Kronecker order swapped: kron(A, B) matches, i.e. column-major flattening or A and B exchanged"
    if alternative is not None:
        name, other = alternative
        if relative_error(candidate, other) <= tolerance:
            return f"equals the {name} block instead"
    return None


def compare_layers(
    result: Mapping[str, Factors],
    scale: float,
    exact: Mapping[str, np.ndarray],
    layers: list[str],
    tolerance: float,
    alternative: tuple[str, Mapping[str, np.ndarray]] | None,
    quantities: Mapping[str, float],
    shared_positions: Mapping[str, int],
) -> tuple[float, Mismatch | None, str | None]:
    """The worst error over ``layers``, the first wrong layer (diagnosed) and the layer
    pattern when only some layers are wrong."""
    errors = {
        layer: relative_error(dense_block(result[layer]) / scale, exact[layer]) for layer in layers
    }
    worst = max(errors.values()) if errors else 0.0
    wrong = [layer for layer in layers if not errors[layer] <= tolerance]
    if not wrong:
        return worst, None, None
    layer = wrong[0]
    other = (alternative[0], alternative[1][layer]) if alternative else None
    diagnosis = diagnose(
        result[layer],
        scale,
        exact[layer],
        tolerance,
        other,
        {**quantities, "S": shared_positions.get(layer, 1)},
    )
    pattern = layer_pattern(errors, tolerance, shared_positions)
    return worst, Mismatch(layer, errors[layer], diagnosis), pattern


# mc/unbiased as kfac_conformance.checks.mc runs it (tests/test_jax_separation.py keeps
# these equal to its constants): 32 seeds (the default profile), 4 samples each, every layer's
# block tested on its own, Holm-corrected (kfac_conformance.checks.significance)
MC_SEEDS = 32
UNBIASED_SAMPLES = 4
# its statistical cases that are stored with every layer exact, so that the stored GGN is the
# target (the PyTorch check falls back on the reference's type-2 KFAC elsewhere)
MC_CASE_IDS = (
    "one-datum-mlp[tanh-ce-sum]",
    "one-datum-mlp[sigmoid-bce-mean]",
    "deep-linear[mse-mean-3batches]",
    "expand-deep-linear[1-axis]",
)


def t_statistic(z: np.ndarray, scale: float) -> float:
    """One-sample t statistic of ``z`` against zero; infinite for a constant nonzero ``z``."""
    mean, spread = float(z.mean()), float(z.std(ddof=1))
    if spread <= 1e-12 * scale:
        return 0.0 if abs(mean) <= 1e-9 * scale else float(np.copysign(np.inf, mean))
    return mean / (spread / len(z) ** 0.5)


def unbiased_statistics(estimates: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    r"""The scale and direction t statistics of MC estimates (one flattened result per row)
    and the mean estimate along the target over the target (see
    ``kfac_conformance.checks.mc``): :math:`z_k = \langle X_k - T, T\rangle/\|T\|^2`;
    the first half of the seeds estimates the bias direction, the second is tested along it."""
    errors = estimates - target
    norm2 = float(target @ target)
    scale_z = errors @ target / norm2
    half = len(errors) // 2
    direction = errors[:half].mean(0)
    direction_z = errors[half:] @ direction / (float(np.linalg.norm(direction)) * norm2**0.5 or 1.0)
    return t_statistic(scale_z, 1.0), t_statistic(direction_z, 1.0), 1 + float(scale_z.mean())


def unbiased_tests(
    layer: str, estimates: np.ndarray, target: np.ndarray
) -> tuple[list[Test], float]:
    """One layer's scale and direction tests (degrees of freedom as the PyTorch check's) and
    its mean estimate along the target over the target."""
    scale_t, direction_t, ratio = unbiased_statistics(estimates, target)
    seeds, half = len(estimates), len(estimates) // 2
    block = (layer, "expand")
    tests = [
        t_test(block, "scale", scale_t, seeds - 1),
        t_test(block, "direction", direction_t, seeds - half - 1),
    ]
    return tests, ratio
