"""Heatmaps of a failed comparison: the candidate's block, the expected block, their difference.

Drawn with matplotlib, the optional extra ``report`` (``pip install "matplotlib>=3.7"``, or in a checkout ``pip install -c constraints.txt -e ".[report]"``);
without it :func:`available` is false and the HTML report says how to get the pictures.

The difference is drawn as ``log10 |candidate - expected|`` (exact zeros at the floor of the
colour scale), so an error confined to one Kronecker tile, to the bias rows, or spread evenly
(a scale) reads at a glance. Thin lines mark the Kronecker tiles of the weight block,
``kron(B, A)`` with tiles of ``dim_a x dim_a`` entries, ``dim_b`` tiles a side; a thick line
marks the boundary between the weight and the bias rows. Entries equal in both blocks are white. Axes count entries of the full block,
also when it was downsampled for storage (:mod:`kfac_conformance.comparison.evidence`).
"""

from __future__ import annotations

import base64
import importlib.util
import io

import numpy as np

ENCODING = "float32-le-base64"  # as written by kfac_conformance.comparison.evidence.encode
INSTALL_HINT = 'pip install "matplotlib>=3.7"  (or, in a checkout: pip install -c constraints.txt -e ".[report]")'
# below this many stored cells per tile side, tile lines would hide the picture
_MIN_CELLS_PER_TILE = 2


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def decode(text: str, size: int) -> np.ndarray:
    """A ``size x size`` matrix stored by :func:`kfac_conformance.comparison.evidence.encode`, as float64."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(size, size).astype(float)


def tile_lines(evidence: dict) -> tuple[list[int], int | None]:
    """Positions (in entries of the full block) of the tile lines, and of the weight/bias line.

    Tile lines are left out when a tile would span fewer than two stored cells.
    """
    dim_a, dim_b, bias_rows = evidence["dim_a"], evidence["dim_b"], evidence["bias_rows"]
    weight = dim_a * dim_b
    cells_per_tile = dim_a * evidence["stored_size"] / evidence["size"]
    tiles = [] if cells_per_tile < _MIN_CELLS_PER_TILE else [k * dim_a for k in range(1, dim_b)]
    return tiles, (weight if bias_rows else None)


def heatmaps_png(evidence: dict, expected_label: str) -> bytes:
    """One PNG with the three heatmaps of ``evidence`` (a report's ``evidence`` entry)."""
    import matplotlib
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    if evidence.get("encoding") != ENCODING:
        raise ValueError(f"unknown block encoding {evidence.get('encoding')!r}")
    stored, size = evidence["stored_size"], evidence["size"]
    candidate = decode(evidence["candidate"], stored)
    expected = decode(evidence["expected"], stored)
    difference = decode(evidence["difference"], stored)
    extent = (0, size, size, 0)  # axes in entries of the full block
    figure = Figure(figsize=(13.5, 4.6), dpi=90)  # a fixed layout: a constrained one costs 1 s
    axes = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.03, right=0.93, bottom=0.07, top=0.85, wspace=0.3)
    largest = float(max(np.abs(candidate).max(), np.abs(expected).max())) or 1.0
    values = TwoSlopeNorm(vcenter=0.0, vmin=-largest, vmax=largest)
    for ax, matrix, title in (
        (axes[0], candidate, "candidate's block"),
        (axes[1], expected, expected_label),
    ):
        image = ax.imshow(
            matrix, cmap="RdBu_r", norm=values, extent=extent, interpolation="nearest"
        )
        ax.set_title(title)
    figure.colorbar(image, ax=axes[:2].tolist(), fraction=0.025, pad=0.02, label="entry")
    equal = difference == 0
    logarithm = np.ma.masked_array(np.log10(np.where(equal, 1.0, difference)), mask=equal)
    colours = matplotlib.colormaps["magma"].with_extremes(bad="white")
    image = axes[2].imshow(logarithm, cmap=colours, extent=extent, interpolation="nearest")
    how = "max per cell" if evidence["downsampled"] else "entrywise"
    axes[2].set_title(f"log10 |candidate - expected|\n({how}; white: equal)")
    figure.colorbar(image, ax=axes[2], fraction=0.046, pad=0.03, label="log10 |difference|")
    tiles, bias = tile_lines(evidence)
    for ax in axes:
        for position in tiles:
            ax.axhline(position, color="0.55", linewidth=0.6)
            ax.axvline(position, color="0.55", linewidth=0.6)
        if bias is not None:
            ax.axhline(bias, color="limegreen", linewidth=2.0)
            ax.axvline(bias, color="limegreen", linewidth=2.0)
    dim_a, dim_b = evidence["dim_a"], evidence["dim_b"]
    parts = [f"layer {evidence['layer']!r}: block {size}x{size}"]
    if stored < size:
        parts.append(f"downsampled to {stored}x{stored}")
    drawn = "grey lines" if tiles or dim_b == 1 else "too small to draw"
    parts.append(f"Kronecker tiles {dim_a}x{dim_a}, {dim_b} a side ({drawn})")
    if bias is not None:
        parts.append(f"bias rows after row {bias} (green line)")
    figure.suptitle("; ".join(parts))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
