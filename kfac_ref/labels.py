"""The labels MC KFAC and EKFAC draw, in the layout of ``y``: with them the oracle forms the
exact MC Fisher that the per-datum vectors of one seed span."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kfac_ref import data_parallel, losses


def sampled_labels(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    mc_samples: int = 1,
    seed: int = 0,
    process_group: data_parallel.ProcessGroup | None = None,
) -> list[Tensor]:
    """One ``(mc_samples, *y.shape)`` tensor per batch: the draws of
    :func:`kfac_ref.compute_kfac` with ``fisher_type="mc"`` and the same ``seed``.

    The same generator, seeded the same way, draws in the same order (batch by batch, from
    the same model outputs); an empty batch draws nothing. With a ``process_group``, ``data``
    is this rank's shard and the draws are this rank's (seeded with
    :func:`~kfac_ref.data_parallel.rank_seed`); no collective is issued.
    """
    generator = torch.Generator().manual_seed(data_parallel.rank_seed(seed, process_group))
    drawn = []
    for X, y in data:
        if X.shape[0] == 0:
            drawn.append(y.new_empty((mc_samples, *y.shape)))
            continue
        devices = [X.device] if X.is_cuda else []
        with torch.random.fork_rng(devices), torch.no_grad():
            output = model(X)
        terms = losses.to_terms(loss_func, output)
        labels = losses.sample_labels(loss_func, terms, mc_samples, generator)
        drawn.append(losses.labels_from_terms(loss_func, labels, output.shape))
    return drawn
