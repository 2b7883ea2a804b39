"""Data parallelism: a candidate computing inside a ``torch.distributed`` group, each rank
holding a shard of the data, must give every rank the single-process answer for all of it.

Each item starts ``W = 2`` and ``W = 4`` ranks (gloo, on this machine's CPUs) with equal and
with unequal shards (``1, ..., 1, N - W + 1`` data), one process group per layout
(:func:`~kfac_conformance.execution.distributed.run_in_process_group`), and compares every
rank's answer with ``kfac_ref`` run in one process on the union of the shards. Unequal
shards are what tell summed factors from averaged ones; ``W = 4`` puts three ranks on one
datum each. The candidate is called as any other (``compute(problem, request)``), with the
default process group initialised and ``problem.batches`` its rank's shard.

MC: one seed cannot give a group the labels one process draws (each rank would have to
replay the streams of the ranks before it), so the contract is that every rank answers the
MC KFAC *of the labels the group drew*: the candidate's ``sampled_labels(problem, request)``,
called on each rank, says which, and the check compares with ``kfac_ref``'s KFAC on them.

These items start processes (about a second per layout), so they run only in the opt-in
``distributed`` profile, on purpose-built problems of 12 data. Under ``torchrun``
(``--launcher torchrun``) the launch fixes ``W``: an item runs its two layouts for that ``W``
only.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kfac_conformance.cases.case import Case
from kfac_conformance.checks.agreement import kfac_on_labels
from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    CheckSkipped,
    Measurement,
    Needs,
)
from kfac_conformance.checks.invariance import distinct_flavours
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.distributed import RankAnswer, run_in_process_group
from kfac_conformance.execution.session import (
    Session,
    dense_blocks,
    reference_compute,
    tolerance_for,
)
from kfac_conformance.execution.torchrun import TorchrunProcess
from kfac_ref.factors import KroneckerFactors

WORLD_SIZES = (2, 4)
LAYOUTS = ("equal", "unequal")
MC_SAMPLES, MC_SEED = 2, 5


def shard_sizes(num_data: int, world: int, layout: str) -> list[int]:
    """How many data each rank holds: ``"equal"`` splits evenly (sizes differ by at most
    one); ``"unequal"`` gives every rank but the last one datum."""
    if num_data < 2 * world:
        raise ValueError(f"{num_data} data are too few for unequal shards over {world} ranks")
    if layout == "equal":
        return [num_data // world + (rank < num_data % world) for rank in range(world)]
    if layout == "unequal":
        return [1] * (world - 1) + [num_data - world + 1]
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def shards(problem: Problem, sizes: Sequence[int]) -> list[Problem]:
    """``problem`` split into one problem per rank (one batch each, in data order)."""
    X = torch.cat([X for X, _ in problem.batches])
    y = torch.cat([y for _, y in problem.batches])
    pieces = zip(X.split(list(sizes)), y.split(list(sizes)), strict=True)
    return [
        Problem(problem.model, problem.loss_func, [piece], list(problem.layers), problem.case_id)
        for piece in pieces
    ]


@dataclass(frozen=True)
class _Layout:
    world: int
    layout: str

    def describe(self, sizes: Sequence[int]) -> str:
        return f"W={self.world} {self.layout} shards {list(sizes)}"


def _layouts(launcher: str, num_data: int) -> list[_Layout]:
    if launcher != "torchrun":
        return [_Layout(world, layout) for world in WORLD_SIZES for layout in LAYOUTS]
    world = TorchrunProcess.from_environment().world
    if num_data < 2 * world:
        raise CheckSkipped(
            f"not supported on this launch: {num_data} data are too few for unequal shards "
            f"over the {world} ranks torchrun started (at most {num_data // 2})"
        )
    return [_Layout(world, layout) for layout in LAYOUTS]


def _claimed_requests(
    session: Session, entry: CaseEntry, fisher_types: Sequence[str], **fields
) -> list[Request]:
    approximation = fields.get("approximation", "kfac")
    return [
        Request(fisher_type, flavour, bias=bias, **fields)
        for fisher_type in fisher_types
        for flavour in distinct_flavours(session, session.fresh(entry))
        for bias in session.supported_bias_modes(entry, fisher_type, flavour, approximation)
    ]


def _compare_ranks(
    session: Session,
    entry: CaseEntry,
    requests: Sequence[Request],
    targets_of: Callable[[Problem, list[RankAnswer], int], dict],
    with_labels: bool = False,
) -> Measurement:
    """Run ``requests`` on every layout; every rank's converted answer to request ``i`` must
    equal ``targets_of(whole, answers, i)``, ``whole`` the problem whose batches are the
    shards."""
    if not requests:
        raise CheckSkipped("not supported: no request of this check is claimed on the problem")
    measurement = Measurement()
    num_data = sum(X.shape[0] for X, _ in session.fresh(entry).batches)
    for layout in _layouts(session.launcher, num_data):
        problem = session.fresh(entry)
        sizes = shard_sizes(num_data, layout.world, layout.layout)
        pieces = shards(problem, sizes)
        quantities = problem.scale_quantities()
        answers = run_in_process_group(
            session.candidate,
            pieces,
            requests,
            with_labels=with_labels,
            launcher=session.launcher,
        )
        whole = Problem(
            problem.model,
            problem.loss_func,
            [p.batches[0] for p in pieces],
            problem.layers,
            problem.case_id,
        )
        for rank, answer in enumerate(answers):
            session.side_effects += [f"rank {rank}: {note}" for note in answer.side_effects]
            session.hygiene += answer.hygiene
        for index, request in enumerate(requests):
            targets = targets_of(whole, answers, index)
            for rank, answer in enumerate(answers):
                result = session.converted(answer.results[index], request, quantities)
                compare = functools.partial(
                    compare_diagnosed,
                    whole,  # as one process sees the data: its batches are the shards
                    result,
                    targets,
                    problem.layers,
                    tolerance_for(problem),
                    measurement,
                    f"rank {rank} of {layout.describe(sizes)}, {request.describe()}",
                    request=request,
                )
                try:
                    compare()
                except CheckFailed as failed:
                    # diagnose it again against what a common combining mistake gives
                    compare(alternatives=_combining_mistakes(whole, pieces, rank, request))
                    raise failed
    return measurement


def _combining_mistakes(
    whole: Problem, pieces: list[Problem], rank: int, request: Request
) -> dict[str, dict[str, Tensor]]:
    """Blocks that wrong ways of combining the ranks' KFAC give on ``rank``, by name."""
    if request.approximation != "kfac":
        return {}
    own = [reference_compute(piece, request) for piece in pieces]
    combined = reference_compute(whole, request)
    # B of this rank's data alone, normalised with the whole data's reduction factor
    rescale = whole.scale_quantities()["R"] / pieces[rank].scale_quantities()["R"]
    return {
        "average of the ranks' own KFAC (unweighted by shard size)": {
            layer: KroneckerFactors(
                sum(result[layer].A for result in own) / len(own),
                sum(result[layer].B for result in own) / len(own),
                factors.bias,
            ).to_dense()
            for layer, factors in own[0].items()
        },
        "KFAC with B of this rank's shard alone (B not all-reduced)": {
            layer: KroneckerFactors(
                factors.A, rescale * own[rank][layer].B, factors.bias
            ).to_dense()
            for layer, factors in combined.items()
        },
    }


def _single_process(approximation: str, fisher_types: tuple[str, ...]) -> Check:
    def measure(session: Session, entry: CaseEntry) -> Measurement:
        requests = _claimed_requests(session, entry, fisher_types, approximation=approximation)

        def reference(whole: Problem, answers: list[RankAnswer], index: int) -> dict:
            return dense_blocks(session.reference(entry, requests[index]))

        return _compare_ranks(session, entry, requests, reference)

    name = "ekfac" if approximation == "ekfac" else "kfac"
    return Check(
        id=f"distributed/{name}",
        statement=(
            f"{name.upper()} computed by W = 2 and 4 ranks of a torch.distributed group "
            "holding equal and unequal shards of the data equals, on every rank, kfac_ref's "
            f"single-process {name.upper()} of all the data ({', '.join(fisher_types)})"
        ),
        source="KFAC's factors are normalised sums over data: shards combine by summed sums and counts",
        kind="reference",
        measure=measure,
        own_cases=CASES,
        needs=Needs(approximations=frozenset({approximation}), distributed=True),
        profiles=frozenset({"distributed"}),
    )


def _mc_on_drawn_labels(session: Session, entry: CaseEntry) -> Measurement:
    if getattr(session.candidate, "sampled_labels", None) is None:
        raise CheckSkipped(
            "not supported: the candidate does not expose the labels its MC Fisher drew "
            "(optional method sampled_labels(problem, request))"
        )
    claimed = _claimed_requests(session, entry, ["mc"], mc_samples=MC_SAMPLES, seed=MC_SEED)
    # each asked twice in one group: the seed must fix the draws
    requests = claimed * 2

    def on_drawn_labels(whole: Problem, answers: list[RankAnswer], index: int) -> dict:
        labels = [answer.labels[index][0] for answer in answers]
        if index >= len(claimed):
            _same_draws(answers, index - len(claimed), index, requests[index])
        labels = [label.double() if label.is_floating_point() else label for label in labels]
        return dense_blocks(kfac_on_labels(lambda: _copy(whole), requests[index], labels))

    return _compare_ranks(session, entry, requests, on_drawn_labels, with_labels=True)


def _same_draws(answers: list[RankAnswer], first: int, again: int, request: Request) -> None:
    for rank, answer in enumerate(answers):
        if not torch.equal(answer.labels[first][0], answer.labels[again][0]):
            raise CheckFailed(
                f"rank {rank} drew other labels when asked again for {request.describe()}",
                diagnosis="the draws depend on more than the seed (the global RNG, a counter): "
                "MC must be reproducible from its seed",
            )


def _copy(problem: Problem) -> Problem:
    return copy.deepcopy(problem)


def _case(id: str, architecture: list, input_shape: tuple, loss: str, **fields) -> Case:
    return Case(
        id=f"data-parallel-{id}",
        architecture=architecture,
        input_shape=input_shape,
        loss=loss,
        seed=700,
        **fields,
    )


_CASES = [
    _case(
        "mlp[tanh-ce-mean-2batches]",
        [["linear", 5, 4, True], ["tanh"], ["linear", 4, 3, True]],
        (6, 5),
        "ce",
        num_batches=2,
    ),
    _case(
        "cnn[relu-mse-mean]",
        [["conv2d", 2, 3, 2, 1, 0, 1, True], ["relu"], ["flatten"], ["linear", 12, 2, True]],
        (12, 2, 3, 3),
        "mse",
    ),
    _case(
        "sequence[sigmoid-bce-mean-pool]",
        [["linear", 3, 4, True], ["sigmoid"], ["mean", [1]], ["linear", 4, 2, True]],
        (12, 4, 3),
        "bce",
    ),
]
CASES = tuple(CaseEntry(case.id, case.make_problem, case) for case in _CASES)

CHECKS = [
    _single_process("kfac", ("type-2", "empirical", "forward-only")),
    _single_process("ekfac", ("type-2", "empirical")),
    Check(
        id="distributed/mc-drawn-labels",
        statement=(
            "MC KFAC computed by W = 2 and 4 ranks (equal and unequal shards) equals, on every "
            "rank, kfac_ref's KFAC of all the data on the labels the ranks say they drew"
        ),
        source="the MC Fisher of the labels drawn; the seed fixes the draws, not their equality to one process's",
        kind="reference",
        measure=_mc_on_drawn_labels,
        own_cases=CASES,
        needs=Needs(fisher_types=frozenset({"mc"}), distributed=True),
        profiles=frozenset({"distributed"}),
    ),
]
