"""The layer kinds :mod:`kfac_conformance.jax.network` builds, importable without JAX.

A stored case with another kind (Conv1d, Conv3d, Embedding) or a grouped convolution is
refused with what it lacks named, not failed: its items are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

KINDS = frozenset(
    {"linear", "conv2d", "tanh", "sigmoid", "relu", "sum", "mean", "flatten", "movedim"}
)


def unsupported(architecture: Sequence[Sequence]) -> str | None:
    """Why the network cannot be built in JAX here (``None``: it can)."""
    unknown = sorted({spec[0] for spec in architecture} - KINDS)
    if unknown:
        return f"the JAX network builder does not know the layer kinds {unknown}"
    # a convolution's spec has 8 entries; a ninth is its groups
    grouped = [list(spec) for spec in architecture if spec[0] == "conv2d" and len(spec) > 8]
    if grouped:
        return f"the JAX network builder does not build grouped convolutions {grouped}"
    return None
