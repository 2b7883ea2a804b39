"""EKFAC's invariances: the reduction factor and the batch split, as for KFAC."""

from __future__ import annotations

from kfac_conformance.checks import invariance
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.ekfac.calls import EKFAC_FISHER_TYPES, NEEDS_EKFAC
from kfac_conformance.execution.session import Session


def _mean_vs_sum(session: Session, entry: CaseEntry):
    return invariance.mean_vs_sum(session, entry, "ekfac", EKFAC_FISHER_TYPES)


def _batch_splitting(session: Session, entry: CaseEntry):
    deterministic = [f for f in EKFAC_FISHER_TYPES if f in invariance.DETERMINISTIC_FISHER_TYPES]
    return invariance.batch_splitting(session, entry, "ekfac", deterministic)


CHECKS = [
    Check(
        "ekfac/mean-vs-sum",
        "EKFAC with reduction='mean' is R times EKFAC with reduction='sum' (every claimed "
        "fisher type and bias mode, and flavour where weights are shared; MC with the same seed)",
        "definition of the reduction factor R (KFAC tutorial)",
        kind="invariance",
        measure=_mean_vs_sum,
        needs=NEEDS_EKFAC,
    ),
    Check(
        "ekfac/batch-splitting",
        "the same data as one batch or as several batches give the same EKFAC (every claimed "
        "deterministic fisher type)",
        invariance.SOURCE,
        kind="invariance",
        measure=_batch_splitting,
        cases=invariance.several_data,
        needs=NEEDS_EKFAC,
    ),
]
