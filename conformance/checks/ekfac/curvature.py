"""The exact curvature ``F`` an EKFAC answer is held to, by fisher type."""

from __future__ import annotations

import torch
from torch import Tensor

from kfac_conformance.checks.base import CaseEntry, CheckSkipped
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import Session
from kfac_conformance.oracle import blocks as oracle

CURVATURE = {"type-2": "ggn", "empirical": "empirical", "mc": "mc"}
NAMES = {"ggn": "GGN", "empirical": "empirical Fisher", "mc": "MC Fisher of the drawn labels"}


def exact_curvature(
    session: Session,
    entry: CaseEntry,
    request: Request,
    problem: Problem,
    mc_fishers: list[tuple[list[Tensor], dict[str, Tensor]]] | None = None,
) -> dict[str, Tensor]:
    """``F`` for ``request``: the stored or cached GGN / empirical Fisher, or the MC Fisher of the
    labels the candidate says it drew for ``problem``. ``mc_fishers`` caches MC Fishers by their
    labels across the requests of one check (flavours and bias modes draw the same labels)."""
    curvature = CURVATURE[request.fisher_type]
    if curvature != "mc":
        return session.exact(entry, curvature)
    labels_of = getattr(session.candidate, "sampled_labels", None)
    if labels_of is None:
        raise CheckSkipped(
            "not supported: the candidate does not expose the labels its MC Fisher drew "
            "(optional method sampled_labels(problem, request))"
        )
    labels = [
        label.detach().cpu().double() if label.is_floating_point() else label.detach().cpu()
        for label in labels_of(problem, request)
    ]
    for seen, blocks in mc_fishers or []:
        if len(seen) == len(labels) and all(map(torch.equal, seen, labels)):
            return blocks
    exact_problem = entry.make_problem().to(device="cpu", dtype=torch.float64)
    blocks = oracle.exact_blocks(
        exact_problem.model,
        exact_problem.loss_func,
        exact_problem.batches,
        exact_problem.layers,
        "mc",
        sampled_labels=labels,
    )
    if mc_fishers is not None:
        mc_fishers.append((labels, blocks))
    return blocks
