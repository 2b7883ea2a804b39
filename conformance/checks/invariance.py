"""Scaling and invariances that hold for any network, exact or not."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kfac_conformance.cases.architectures import MoveDim
from kfac_conformance.checks import drawn
from kfac_conformance.checks.base import (
    CaseEntry,
    Check,
    CheckSkipped,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.comparison.diagnosis import compare_diagnosed
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import (
    Session,
    compare_blocks,
    dense_blocks,
    tolerance_for,
    with_reduction,
)


def _compare_transformed(
    session, entry, transform, context, flavour="expand", scale=1.0, approximation="kfac"
):
    request = session.first_claimed(entry, ("type-2", "empirical"), flavour, approximation)
    problem = session.fresh(entry)
    original = session.call(problem, request)
    transformed_problem = transform(session.fresh(entry))
    transformed = session.call(transformed_problem, request)
    measurement = Measurement()
    compare_diagnosed(
        session.fresh(entry),
        original,
        dense_blocks(transformed, scale),
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


def mean_vs_sum(session: Session, entry: CaseEntry, approximation: str = "kfac"):
    reduction = session.fresh(entry).loss_func.reduction
    other = "sum" if reduction == "mean" else "mean"
    ratio = _mean_over_sum(session.fresh(entry))
    return _compare_transformed(
        session,
        entry,
        lambda problem: with_reduction(problem, other),
        f"reduction={other!r} scaled by R_mean / R_sum = {ratio:.6g}",
        scale=ratio if reduction == "mean" else 1 / ratio,
        approximation=approximation,
    )


def batch_splitting(session: Session, entry: CaseEntry, approximation: str = "kfac"):
    problem = session.fresh(entry)
    if len(problem.batches) > 1:
        return _compare_transformed(
            session,
            entry,
            concatenated,
            "batches concatenated into one",
            approximation=approximation,
        )
    if _num_data(problem) < 2:
        raise CheckSkipped("needs at least two data to split")

    def split(problem: Problem) -> Problem:
        X, y = problem.batches[0]
        half = X.shape[0] // 2
        problem.batches = [(X[:half], y[:half]), (X[half:], y[half:])]
        return problem

    return _compare_transformed(
        session, entry, split, "one batch split into two", approximation=approximation
    )


def _permutation(session: Session, entry: CaseEntry):
    if _num_data(session.fresh(entry)) < 2:
        raise CheckSkipped("needs at least two data to permute")

    def permuted(problem: Problem) -> Problem:
        X, y = concatenated(problem).batches[0]
        order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(0)).to(X.device)
        problem.batches = [(X[order], y[order])]
        return problem

    return _compare_transformed(session, entry, permuted, "data permuted")


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
        session, entry, flattened, "shared positions flattened into the batch axis"
    )


def _bias_joint_vs_separate(session: Session, entry: CaseEntry):
    problem = session.fresh(entry)
    if all(problem.model.get_submodule(layer).bias is None for layer in problem.layers):
        raise CheckSkipped("no layer has a bias")
    measurement = Measurement()
    ran = False
    for flavour in ("expand", "reduce"):
        modes = session.supported_bias_modes(entry, "type-2", flavour)
        if set(modes) != {"separate", "joint"}:
            continue
        joint = session.call(session.fresh(entry), Request("type-2", flavour, bias="joint"))
        separate = session.call(session.fresh(entry), Request("type-2", flavour, bias="separate"))
        compare_blocks(
            separate,
            dense_blocks(joint),
            problem.layers,
            tolerance_for(problem),
            measurement,
            f"weight and bias blocks, separate vs joint, kfac_approx={flavour}",
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
        "KFAC with reduction='mean' is R times KFAC with reduction='sum'",
        "definition of the reduction factor R (KFAC tutorial)",
        kind="invariance",
        measure=mean_vs_sum,
        fuzz=FuzzProperty(drawn.float64(drawn.always), FUZZ_ORDER),
    ),
    Check(
        "invariance/batch-splitting",
        "the same data as one batch or as several batches give the same KFAC",
        SOURCE,
        kind="invariance",
        measure=batch_splitting,
        cases=several_data,
        fuzz=FuzzProperty(drawn.float64(drawn.several_data), FUZZ_ORDER),
    ),
    Check(
        "invariance/permutation",
        "permuting the data leaves KFAC unchanged",
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
        "joint and separate bias give the same weight block and the same bias block",
        "the ones row of a joint bias contributes A[-1, -1] = 1",
        kind="invariance",
        measure=_bias_joint_vs_separate,
        needs=Needs(fisher_types=frozenset({"type-2"})),
        fuzz=FuzzProperty(drawn.float64(drawn.always), FUZZ_ORDER),
    ),
]
