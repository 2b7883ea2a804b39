"""What an MC failure points to, where the numbers say more than "off by a factor".

Three slips of an MC sampler fail the MC checks with numbers that look like a scale or a
convergence problem, though the cause is the labels:

- the true labels in place of labels sampled from the model: the answer is the empirical
  Fisher, the same for every seed;
- labels drawn from torch's global generator instead of one seeded with ``request.seed``: the
  same seed gives another answer once the global generator moves;
- one label drawn per datum and repeated ``mc_samples`` times: the error does not shrink with
  ``mc_samples`` (a ratio of RMS errors near 1 where 1/sqrt(M) predicts 4).
"""

from __future__ import annotations

import dataclasses

from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.comparison.blocks import relative_error
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import Session, tolerance_for

TRUE_LABELS = (
    "the MC answer is the empirical Fisher's KFAC: the true labels are used where labels "
    "sampled from the model's predictive distribution belong"
)
SEED_IGNORED = (
    "the seed has no effect: the labels are not drawn from a generator seeded with request.seed"
)
GLOBAL_GENERATOR = (
    "the same seed gave another answer once torch's global generator was reseeded: the labels "
    "are drawn from the global generator, not from one seeded with request.seed"
)
REPEATED_SAMPLE = (
    "the error does not shrink with mc_samples: the samples of a datum are one draw repeated "
    "(or only one of them is used)"
)
# a ratio of RMS errors this close to 1 means no averaging at all (1/sqrt(M) predicts 4)
NOT_AVERAGED = (0.9, 1.1)


def is_empirical_fisher(session: Session, entry: CaseEntry, answer: dict, request: Request) -> bool:
    """Whether the candidate's MC ``answer`` equals the reference's empirical-Fisher KFAC for
    the same flavour and bias mode (to the comparison tolerance, on every layer)."""
    empirical = session.reference(
        entry, dataclasses.replace(request, fisher_type="empirical", mc_samples=1, seed=0)
    )
    problem = session.fresh(entry)
    tolerance = tolerance_for(problem)
    return all(
        relative_error(answer[layer].to_dense(), empirical[layer].to_dense()) <= tolerance
        for layer in problem.layers
    )


def ignored_seed(session: Session, entry: CaseEntry, answer: dict, request: Request) -> str:
    """Why two seeds gave the same MC answer: the true labels, or a seed not used."""
    return TRUE_LABELS if is_empirical_fisher(session, entry, answer, request) else SEED_IGNORED


def not_averaged(ratios: list[float]) -> str | None:
    """:data:`REPEATED_SAMPLE` when every failing block's error ratio is about 1."""
    low, high = NOT_AVERAGED
    return REPEATED_SAMPLE if ratios and all(low <= r <= high for r in ratios) else None
