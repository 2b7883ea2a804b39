r"""Data parallelism: each process of a ``torch.distributed`` group holds a shard of the data,
and every process gets KFAC of their union.

KFAC's factors are normalised sums over data, so shards combine by summing *sums and counts*
before normalising, never by averaging per-shard factors. With rank ``r`` holding ``N_r``
data (``C_r`` input positions of a layer, ``N = sum_r N_r``, ``C = sum_r C_r``):

.. math::  A = \frac{\sum_r \sum_{(n,s)\in r} a_{n,s}a_{n,s}^\top}{\sum_r C_r}, \qquad
           B = R(N)\sum_r \sum_{n\in r}\sum_v\sum_s g_{n,s,v}g_{n,s,v}^\top,

with ``R(N)`` the reduction factor of the *whole* data set (``2/(N dim Y)`` for a mean MSE).
The average of per-rank factors, :math:`\frac1W\sum_r A_r`, weights a shard of one datum as
much as a shard of a thousand: it is right only for equal shards. EKFAC's corrected
eigenvalues are sums over data too (:mod:`kfac_ref.ekfac`) and combine the same way, in the
eigenbasis of the combined factors.

MC draws labels on each rank from a generator seeded with :func:`rank_seed`: one seed gives
every rank its own stream, and one process (``W = 1``) draws what the single-process code
draws. The answer is the MC KFAC of the labels drawn, not the single-process one for the
same seed (that would need every rank to replay the streams of the ranks before it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

# a torch.distributed.ProcessGroup; typed loosely so that importing kfac_ref needs no
# torch.distributed build (it is optional in torch)
ProcessGroup = Any


def world(process_group: ProcessGroup) -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``process_group``."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError(
            "process_group was given but torch.distributed is not initialised: call "
            "torch.distributed.init_process_group first (or pass process_group=None)"
        )
    return dist.get_rank(process_group), dist.get_world_size(process_group)


def rank_seed(seed: int, process_group: ProcessGroup | None) -> int:
    """The seed of this rank's MC generator: ``seed * W + rank`` (``seed`` for one process),
    distinct for every (seed, rank) of a group of ``W``."""
    if process_group is None:
        return seed
    rank, size = world(process_group)
    return seed * size + rank


class ShardSums(NamedTuple):
    """What KFAC sums over one rank's data: per layer the input sums and their position
    counts, the gradient sums (none for ``"forward-only"``), and the number of data."""

    input_sums: dict[str, Tensor]
    input_counts: dict[str, int]
    grad_sums: dict[str, Tensor]
    num_data: int


def combine(sums: ShardSums, process_group: ProcessGroup | None) -> ShardSums:
    """The sums of the union of every rank's shard: each sum and each count all-reduced
    once (the identity for one process). Normalising comes after, by the combined counts."""
    sum_over_ranks(sums.input_sums, process_group)
    sum_over_ranks(sums.grad_sums, process_group)
    num_data, *counts = count_over_ranks(
        [sums.num_data, *sums.input_counts.values()], process_group
    )
    return ShardSums(
        sums.input_sums,
        dict(zip(sums.input_counts, counts, strict=True)),
        sums.grad_sums,
        num_data,
    )


def sum_over_ranks(sums: dict[str, Tensor], process_group: ProcessGroup | None) -> None:
    """Replace every tensor of ``sums`` by its sum over ranks, in sorted key order so that
    every rank issues the same collectives in the same order."""
    if process_group is None:
        return
    import torch.distributed as dist

    for name in sorted(sums):
        # the collective writes in place: never into a tensor the caller still shares
        sums[name] = sums[name].clone()
        dist.all_reduce(sums[name], op=dist.ReduceOp.SUM, group=process_group)


def count_over_ranks(counts: list[int], process_group: ProcessGroup | None) -> list[int]:
    """The counts summed over ranks, as exact integers in the order given."""
    if process_group is None:
        return list(counts)
    import torch.distributed as dist

    device = _collective_device(process_group)
    totals = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=process_group)
    return [int(total) for total in totals.tolist()]


def _collective_device(process_group: ProcessGroup) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
