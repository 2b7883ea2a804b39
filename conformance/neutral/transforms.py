"""Stored cases transformed as the PyTorch suite's invariances transform problems
(``kfac_conformance.checks.invariance``), in numpy: the other reduction, the batches
concatenated or split, the data permuted; and a case's shards for the devices of a
data-parallel run (:func:`sharded`).

A transformed case has its own id (the case's with what changed) and its own counts, so that
a candidate that caches per case id computes it afresh and the conventions read its ``R``.
"""

from __future__ import annotations

import numpy as np

from kfac_conformance.contract import conventions
from kfac_conformance.neutral.fixtures import LOSS_CLASSES, StoredCase

# any fixed permutation will do (the PyTorch check draws its own with torch.randperm)
PERMUTATION_SEED = 0


def _transformed(case: StoredCase, change: str, record: dict, tensors: dict) -> StoredCase:
    batches = [key for key in tensors if key.startswith("X.")]
    sizes = [tensors[f"X.{i}"].shape[0] for i in range(len(batches))]
    counts = {**record["counts"], "K": len(batches), "N": sum(sizes)}
    loss = LOSS_CLASSES[record["loss"]]
    counts["R"] = conventions.reduction_factor(
        loss, record["reduction"], int(counts["N"]), int(counts["T"])
    )
    record = {
        **record,
        "num_batches": len(batches),
        "input_shape": [sizes[0], *record["input_shape"][1:]],
        "counts": counts,
    }
    record.pop("batch_sizes", None)
    if len(set(sizes)) > 1:
        record["batch_sizes"] = sizes
    return StoredCase(f"{case.id} ({change})", record, tensors)


def _with_batches(case: StoredCase, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    tensors = {key: value for key, value in case.tensors.items() if key[:2] not in ("X.", "y.")}
    for index, (X, y) in enumerate(batches):
        tensors[f"X.{index}"], tensors[f"y.{index}"] = X, y
    return tensors


def with_reduction(case: StoredCase, reduction: str) -> StoredCase:
    record = {**case.record, "reduction": reduction}
    return _transformed(case, f"reduction={reduction!r}", record, dict(case.tensors))


def _all_data(case: StoredCase) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([X for X, _ in case.batches]),
        np.concatenate([y for _, y in case.batches]),
    )


def concatenated(case: StoredCase) -> StoredCase:
    tensors = _with_batches(case, [_all_data(case)])
    return _transformed(case, "batches concatenated into one", case.record, tensors)


def split_in_two(case: StoredCase) -> StoredCase:
    X, y = _all_data(case)
    half = X.shape[0] // 2
    tensors = _with_batches(case, [(X[:half], y[:half]), (X[half:], y[half:])])
    return _transformed(case, "one batch split into two", case.record, tensors)


def permuted(case: StoredCase) -> StoredCase:
    X, y = _all_data(case)
    order = np.random.default_rng(PERMUTATION_SEED).permutation(X.shape[0])
    tensors = _with_batches(case, [(X[order], y[order])])
    return _transformed(case, "data permuted", case.record, tensors)


def sharded(case: StoredCase, world: int) -> list[StoredCase]:
    """``case`` split over ``world`` devices: device ``d`` holds the ``d``-th of ``world`` equal
    contiguous slices of every batch, so that each batch is one data-parallel step of all the
    devices. Equal, because ``pmap``-style collectives need equal shapes on every device."""
    sizes = [X.shape[0] for X, _ in case.batches]
    if world < 1 or any(size % world for size in sizes):
        raise ValueError(
            f"case {case.id!r}: batches of {sizes} data do not split into {world} equal shards"
        )
    shards = []
    for device in range(world):
        pieces = [
            (X[device * step : (device + 1) * step], y[device * step : (device + 1) * step])
            for (X, y), step in zip(case.batches, (size // world for size in sizes), strict=True)
        ]
        change = f"shard {device} of {world}"
        shards.append(_transformed(case, change, case.record, _with_batches(case, pieces)))
    return shards
