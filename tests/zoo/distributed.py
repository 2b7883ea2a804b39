"""Data-parallel pitfalls: how factors are combined over the ranks of a process group.

They claim ``Capabilities(distributed=True)`` and are killed in the opt-in ``distributed``
profile (``tests/test_distributed.py``), so they are listed in ``DISTRIBUTED_MUTANTS``, not in
``MUTANTS``, whose killers are items of the default profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch.distributed as dist

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.distributed import current_process_group
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref import data_parallel
from kfac_ref.data_parallel import ShardSums
from kfac_ref.factors import KroneckerFactors

from .base import Mutant, planted, replace


class DataParallelMutant(Mutant):
    capabilities = Capabilities(distributed=True)
    killers = ("distributed/kfac",)

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        with planted(self.patches(request)):
            return reference_compute(problem, request, current_process_group())


class AveragesRankFactors(DataParallelMutant):
    """Each rank computes KFAC of its own shard and the ranks average the factors, ``A =
    (1/W) sum_r A_r``: a one-datum shard weighs as much as a large one, and a sum reduction's
    ``B`` is divided by ``W``. Right only for equal shards of a mean loss.

    Killed by distributed/kfac (its unequal shards).
    """

    diagnosis = "average of the ranks' own KFAC"

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        local = reference_compute(problem, request)
        group = current_process_group()
        if group is None:
            return local
        size = dist.get_world_size(group)
        averaged = {}
        for layer, factors in local.items():
            A, B = factors.A.clone(), factors.B.clone()
            dist.all_reduce(A, group=group)
            dist.all_reduce(B, group=group)
            averaged[layer] = KroneckerFactors(A / size, B / size, factors.bias)
        return averaged


# the reference's own step, kept before a mutant replaces it
_COMBINE = data_parallel.combine


def _combine_without_grad_sums(sums: ShardSums, process_group) -> ShardSums:
    combined = _COMBINE(sums._replace(grad_sums={}), process_group)
    return combined._replace(grad_sums=sums.grad_sums)


def _combine_input_sums_twice(sums: ShardSums, process_group) -> ShardSums:
    combined = _COMBINE(sums, process_group)
    data_parallel.sum_over_ranks(combined.input_sums, process_group)
    return combined


class ForgetsToReduceB(DataParallelMutant):
    """The ranks all-reduce the input sums, the counts and the number of data but not the
    gradient sums: each rank's ``B`` covers its own shard only, normalised as if it held
    all the data.

    Killed by distributed/kfac.
    """

    diagnosis = "B of this rank's shard alone"

    def patches(self, request: Request):
        return [replace(data_parallel, "combine", _combine_without_grad_sums)]


class ReducesATwice(DataParallelMutant):
    """The input sums are all-reduced twice (say, once in a helper and again by its
    caller): ``A`` is ``W`` times too large on every rank, for any shards.

    Killed by distributed/kfac.
    """

    diagnosis = "A (EKFAC: S) carries a factor it must not"

    def patches(self, request: Request):
        return [replace(data_parallel, "combine", _combine_input_sums_twice)]


class McSeedAdvancesPerCall(DataParallelMutant):
    """Each call draws its MC labels with a seed that advances with every call (a counter
    added to it, as an RNG shared across calls would): the labels it reports are the ones it
    used, but the same seed never gives the same answer twice.

    Killed by distributed/mc-drawn-labels.
    """

    killers = ("distributed/mc-drawn-labels",)
    diagnosis = "MC must be reproducible from its seed"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self.calls += 1
        return super().compute(problem, self._advanced(request))

    def sampled_labels(self, problem: Problem, request: Request):
        """The labels of the last call (the suite asks right after it)."""
        advanced = self._advanced(request)
        return ReferenceCandidate().sampled_labels(problem, advanced)

    def _advanced(self, request: Request) -> Request:
        return dataclasses.replace(request, seed=request.seed + self.calls)


DISTRIBUTED_MUTANTS: list[type[Mutant]] = [
    AveragesRankFactors,
    ForgetsToReduceB,
    ReducesATwice,
    McSeedAdvancesPerCall,
]
