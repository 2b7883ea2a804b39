r"""The statistics of ``mc/unbiased`` in numpy, as ``kfac_conformance.checks.mc`` runs them.

``tests/test_jax_separation.py`` keeps the constants and the per-layer tests equal to the
PyTorch check's: 32 seeds (the default profile), 4 samples each, every layer's block tested on
its own, Holm-corrected at family-wise level ``FAMILY_ALPHA`` (``1e-6``, the chance that a
correct candidate fails an item; :mod:`kfac_conformance.checks.significance`).
"""

from __future__ import annotations

import numpy as np

from kfac_conformance.checks.significance import Test, t_test

MC_SEEDS = 32
UNBIASED_SAMPLES = 4
# the statistical cases of the PyTorch check whose target is stored: the GGN where every
# layer is exact, else the reference's type-2 KFAC (stored with the agreement cases), as the
# PyTorch check takes them
MC_CASE_IDS = (
    "one-datum-mlp[tanh-ce-sum]",
    "one-datum-mlp[sigmoid-bce-mean]",
    "deep-linear[mse-mean-3batches]",
    "expand-deep-linear[1-axis]",
    "expand-deep-linear[2-axes]",
    "mlp[tanh-ce-batch]",
    "cnn[relu-ce]",
    "cnn1d[tanh-ce]",
    "cnn3d[sigmoid-mse-feature-map]",
    "embedding[tanh-bce-mean-pool]",
    "sequence[tanh-ce-per-position]",
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
