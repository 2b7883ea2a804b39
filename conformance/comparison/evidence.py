"""What a failed block comparison keeps for the report: both blocks, small enough to store.

The report draws heatmaps of the candidate's block, the expected block and their difference
(see :mod:`kfac_conformance.reports.heatmaps`). A block of ``n > MAX_STORED`` rows is downsampled to
``MAX_STORED x MAX_STORED`` cells of about ``n / MAX_STORED`` entries a side (adaptive pooling):

    stored[i, j] = mean of block over cell (i, j)            (candidate and expected)
    stored[i, j] = max |candidate - expected| over cell (i, j)  (difference)

The difference is taken before downsampling and pooled by its maximum, so one wrong entry in
a large block stays visible. It is stored apart from the two blocks because it can be far
below their float32 resolution (a float64 case fails at a relative error of 1e-10).

Each matrix is stored as base64 of its float32 values, little-endian, row-major: 64 x 64
takes 22 kB of JSON instead of about 80 kB as a list of numbers. The Kronecker tiles are
described by ``dim_a`` (a tile's side: the weight's input dimension), ``dim_b`` (tiles per
side: the output dimension) and ``bias_rows`` (rows after the ``dim_a * dim_b`` weight rows).
"""

from __future__ import annotations

import base64

import torch
from torch import Tensor
from torch.nn import functional

from kfac_conformance.comparison.blocks import factor_sizes
from kfac_ref.factors import EKFACFactors, KroneckerFactors

MAX_STORED = 64
ENCODING = "float32-le-base64"


def encode(matrix: Tensor) -> str:
    """Read back by :func:`kfac_conformance.reports.heatmaps.decode`."""
    values = matrix.detach().to(device="cpu", dtype=torch.float32).numpy()
    return base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")


def _downsample(matrix: Tensor, size: int, pool) -> Tensor:
    return pool(matrix[None, None], size)[0, 0] if matrix.shape[0] > size else matrix


def block_evidence(
    layer: str, factors: KroneckerFactors | EKFACFactors, expected: Tensor
) -> dict | None:
    """The blocks of ``layer`` as the report stores them; ``None`` when they cannot be compared."""
    candidate = factors.to_dense().detach().double().cpu()
    expected = expected.detach().double().cpu()
    if candidate.shape != expected.shape:
        return None
    size = candidate.shape[0]
    stored = min(size, MAX_STORED)
    difference = (candidate - expected).abs()
    dim_a, dim_b = factor_sizes(factors)
    return {
        "layer": layer,
        "size": size,
        "stored_size": stored,
        "downsampled": stored < size,
        "dim_a": dim_a - (factors.bias == "joint"),
        "dim_b": dim_b,
        "bias_rows": 0 if factors.bias == "none" else dim_b,
        "bias": factors.bias,
        "encoding": ENCODING,
        "candidate": encode(_downsample(candidate, stored, functional.adaptive_avg_pool2d)),
        "expected": encode(_downsample(expected, stored, functional.adaptive_avg_pool2d)),
        "difference": encode(_downsample(difference, stored, functional.adaptive_max_pool2d)),
    }
