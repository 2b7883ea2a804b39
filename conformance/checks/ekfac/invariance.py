"""EKFAC's invariances: the reduction factor and the batch split, as for KFAC."""

from __future__ import annotations

from kfac_conformance.checks import invariance
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.ekfac.calls import NEEDS_EKFAC
from kfac_conformance.execution.session import Session


def _mean_vs_sum(session: Session, entry: CaseEntry):
    return invariance.mean_vs_sum(session, entry, approximation="ekfac")


def _batch_splitting(session: Session, entry: CaseEntry):
    return invariance.batch_splitting(session, entry, approximation="ekfac")


CHECKS = [
    Check(
        "ekfac/mean-vs-sum",
        "EKFAC with reduction='mean' is R times EKFAC with reduction='sum'",
        "definition of the reduction factor R (KFAC tutorial)",
        kind="invariance",
        measure=_mean_vs_sum,
        needs=NEEDS_EKFAC,
    ),
    Check(
        "ekfac/batch-splitting",
        "the same data as one batch or as several batches give the same EKFAC",
        invariance.SOURCE,
        kind="invariance",
        measure=_batch_splitting,
        cases=invariance.several_data,
        needs=NEEDS_EKFAC,
    ),
]
