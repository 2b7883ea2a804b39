"""Scaling and invariances that hold for any network, exact or not."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from kfac_conformance.cases.architectures import MoveDim
from kfac_conformance.checks import drawn
from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckFailed,
    CheckSkipped,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract import conventions
from kfac_conformance.contract.problem import (
    BIAS_MODES,
    CONVOLUTIONS,
    FISHER_TYPES,
    FLAVOURS,
    Problem,
    Request,
)
from kfac_conformance.execution.session import (
    Session,
    compare_blocks,
    dense_blocks,
    tolerance_for,
    with_reduction,
)

# MC draws its labels batch by batch and datum by datum: splitting, permuting or flattening
# the data changes the draws, so those invariances hold for the deterministic Fisher types
# only. The reduction and the bias layout change no draw: with the same seed, MC holds too.
DETERMINISTIC_FISHER_TYPES = ("type-2", "empirical", "forward-only")


def claimed_requests(
    session: Session,
    entry: CaseEntry,
    fisher_types: Sequence[str],
    flavours: Sequence[str] = ("expand",),
    approximation: str = "kfac",
    every_bias_mode: bool = False,
) -> list[Request]:
    """A request for every claimed fisher type and flavour of these, with the first claimed
    bias mode; with ``every_bias_mode``, the first claimed flavour also with every other
    claimed bias mode (each value once, not every combination). Skipped when none is claimed."""
    requests = []
    for fisher_type in fisher_types:
        first_flavour = True
        for flavour in flavours:
            modes = session.supported_bias_modes(entry, fisher_type, flavour, approximation)
            chosen = modes if every_bias_mode and first_flavour else modes[:1]
            requests += [
                Request(fisher_type, flavour, bias=bias, approximation=approximation)
                for bias in chosen
            ]
            first_flavour = first_flavour and not modes
    if not requests:
        raise CheckSkipped(
            f"not supported: none of the fisher types {list(fisher_types)} is claimed"
            + (f" for {approximation.upper()}" if approximation != "kfac" else "")
        )
    return requests


def distinct_flavours(session: Session, problem: Problem) -> tuple[str, ...]:
    """The flavours worth asking for on ``problem``: every one where a layer shares its weights
    across positions, else the first claimed (without weight sharing reduce is expand)."""
    shares = bool(problem.layers_with_shared_axes()) or any(
        isinstance(problem.model.get_submodule(layer), CONVOLUTIONS) for layer in problem.layers
    )
    claimed = [f for f in FLAVOURS if f in session.candidate.capabilities.flavours]
    return tuple(claimed) if shares else tuple(claimed[:1])


def _compare_transformed(
    session: Session,
    entry: CaseEntry,
    transform: Callable[[Problem], Problem],
    context: str,
    requests: Sequence[Request],
    scale: Callable[[Request], float] = lambda request: 1.0,
) -> Measurement:
    """Every request's answer on the problem equals ``scale`` times its answer on
    ``transform(problem)``."""
    measurement = Measurement()
    for request in requests:
        problem = session.fresh(entry)
        original = session.call(problem, request)
        transformed = session.call(transform(session.fresh(entry)), request)
        compare_diagnosed(
            session.fresh(entry),
            original,
            dense_blocks(transformed, scale(request)),
            problem.layers,
            tolerance_for(problem),
            measurement,
            f"{context}, {request.describe()}",
            request=request,
            against=transform(session.fresh(entry)),
        )
    return measurement


def concatenated(problem: Problem) -> Problem:
    problem.batches = [
        (torch.cat([X for X, _ in problem.batches]), torch.cat([y for _, y in problem.batches]))
    ]
    return problem


def _num_data(problem: Problem) -> int:
    return sum(X.shape[0] for X, _ in problem.batches)


def _mean_over_sum(problem: Problem) -> float:
    """``R_mean / R_sum``: one over the number of averaged elements, whatever the split."""
    mean = with_reduction(problem, "mean").scale_quantities()["R"]
    return mean / with_reduction(problem, "sum").scale_quantities()["R"]


def mean_vs_sum(
    session: Session,
    entry: CaseEntry,
    approximation: str = "kfac",
    fisher_types: Sequence[str] = FISHER_TYPES,
):
    reduction = session.fresh(entry).loss_func.reduction
    other = "sum" if reduction == "mean" else "mean"
    ratio = _mean_over_sum(session.fresh(entry))
    factor = ratio if reduction == "mean" else 1 / ratio

    def scale(request: Request) -> float:
        # forward-only's B is no loss curvature: it does not depend on the reduction
        return factor if conventions.governing_field(request.fisher_type) else 1.0

    return _compare_transformed(
        session,
        entry,
        lambda problem: with_reduction(problem, other),
        f"reduction={other!r} scaled by R_mean / R_sum = {ratio:.6g} (1 for forward-only)",
        claimed_requests(
            session,
            entry,
            fisher_types,
            distinct_flavours(session, session.fresh(entry)),
            approximation,
            every_bias_mode=True,
        ),
        scale,
    )


def batch_splitting(
    session: Session,
    entry: CaseEntry,
    approximation: str = "kfac",
    fisher_types: Sequence[str] = DETERMINISTIC_FISHER_TYPES,
):
    problem = session.fresh(entry)
    requests = claimed_requests(session, entry, fisher_types, approximation=approximation)
    if len(problem.batches) > 1:
        sizes = [X.shape[0] for X, _ in problem.batches]
        transform, context = concatenated, "batches concatenated into one"
    elif _num_data(problem) < 2:
        raise CheckSkipped("needs at least two data to split")
    else:
        half = _num_data(problem) // 2
        sizes = [half, _num_data(problem) - half]

        def transform(problem: Problem) -> Problem:
            X, y = problem.batches[0]
            problem.batches = [(X[:half], y[:half]), (X[half:], y[half:])]
            return problem

        context = "one batch split into two"
    try:
        return _compare_transformed(session, entry, transform, context, requests)
    except CheckFailed as failed:
        if len(set(sizes)) > 1 and failed.diagnosis is None:
            failed.diagnosis = (
                f"the batches have unequal sizes {sizes}: are per-batch factors averaged with "
                "equal weights instead of by their numbers of data?"
            )
        raise


def _permutation(session: Session, entry: CaseEntry):
    if _num_data(session.fresh(entry)) < 2:
        raise CheckSkipped("needs at least two data to permute")

    def permuted(problem: Problem) -> Problem:
        X, y = concatenated(problem).batches[0]
        order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0)).to(X.device)
        problem.batches = [(X[order], y[order])]
        return problem

    requests = claimed_requests(session, entry, DETERMINISTIC_FISHER_TYPES)
    return _compare_transformed(session, entry, permuted, "data permuted", requests)


def _flattened_output(session: Session, entry: CaseEntry):
    def flattened(problem: Problem) -> Problem:
        kept = [
            (name, module)
            for name, module in problem.model.named_children()
            if not isinstance(module, MoveDim)
        ]
        problem.model = nn.Sequential(OrderedDict(kept))
        is_ce = isinstance(problem.loss_func, nn.CrossEntropyLoss)
        problem.batches = [
            (X.reshape(-1, X.shape[-1]), y.reshape(-1) if is_ce else y.reshape(-1, y.shape[-1]))
            for X, y in problem.batches
        ]
        return problem

    return _compare_transformed(
        session,
        entry,
        flattened,
        "shared positions flattened into the batch axis",
        claimed_requests(session, entry, DETERMINISTIC_FISHER_TYPES),
    )


def _bias_joint_vs_separate(session: Session, entry: CaseEntry):
    problem = session.fresh(entry)
    if all(
        getattr(problem.model.get_submodule(layer), "bias", None) is None
        for layer in problem.layers
    ):
        raise CheckSkipped("no layer has a bias")
    measurement = Measurement()
    ran = False
    for fisher_type in FISHER_TYPES:
        for flavour in distinct_flavours(session, problem):
            modes = session.supported_bias_modes(entry, fisher_type, flavour)
            if set(modes) != set(BIAS_MODES):
                continue
            joint, separate = (
                session.call(session.fresh(entry), Request(fisher_type, flavour, bias=bias))
                for bias in ("joint", "separate")
            )
            compare_blocks(
                separate,
                dense_blocks(joint),
                problem.layers,
                tolerance_for(problem),
                measurement,
                f"weight and bias blocks, separate vs joint, fisher_type={fisher_type!r}, "
                f"kfac_approx={flavour}",
            )
            ran = True
    if not ran:
        raise CheckSkipped("not supported: both bias modes are needed")
    return measurement


def several_data(entry: CaseEntry) -> bool:
    return entry.case is None or entry.case.num_data >= 2


def _per_position(entry: CaseEntry) -> bool:
    return entry.case is not None and entry.case.per_position


SOURCE = "plain invariance"
FUZZ_ORDER = 3
CHECKS = [
    Check(
        "invariance/mean-vs-sum",
        "KFAC with reduction='mean' is R times KFAC with reduction='sum' (the same for "
        "forward-only; MC with the same seed), for every claimed fisher type and bias mode, "
        "and flavour where weights are shared",
        "definition of the reduction factor R (KFAC tutorial)",
        kind="invariance",
        measure=mean_vs_sum,
        fuzz=FuzzProperty(drawn.float64(drawn.always), FUZZ_ORDER),
    ),
    Check(
        "invariance/batch-splitting",
        "the same data as one batch or as several batches give the same KFAC (every claimed "
        "deterministic fisher type)",
        SOURCE,
        kind="invariance",
        measure=batch_splitting,
        cases=several_data,
        fuzz=FuzzProperty(drawn.float64(drawn.several_data), FUZZ_ORDER),
    ),
    Check(
        "invariance/permutation",
        "permuting the data leaves KFAC unchanged (every claimed deterministic fisher type)",
        SOURCE,
        kind="invariance",
        measure=_permutation,
        cases=several_data,
        fuzz=FuzzProperty(drawn.float64(drawn.several_data), FUZZ_ORDER),
    ),
    Check(
        "invariance/flattened-output",
        "a per-position network on (N, S, ...) outputs equals the same network on (N*S, ...) (KFAC-expand)",
        "Eschenhagen et al. 2023: expand treats shared positions like extra data",
        kind="invariance",
        measure=_flattened_output,
        cases=_per_position,
        fuzz=FuzzProperty(drawn.float64(drawn.per_position), FUZZ_ORDER),
    ),
    Check(
        "invariance/bias-joint-vs-separate",
        "joint and separate bias give the same weight block and the same bias block (every "
        "claimed fisher type, and flavour where weights are shared; MC with the same seed)",
        "the ones row of a joint bias contributes A[-1, -1] = 1",
        kind="invariance",
        measure=_bias_joint_vs_separate,
        needs=Needs(fisher_types=frozenset({"type-2"})),
        fuzz=FuzzProperty(drawn.float64(drawn.always), FUZZ_ORDER),
    ),
]
