"""Side effects: a candidate leaves the model and global state as it found them, and is repeatable.

Every candidate call is watched (``calling.call_candidate``); here a side effect fails the
check, everywhere else it is restored and noted in the result's message.
"""

from __future__ import annotations

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, FuzzProperty, Measurement
from kfac_conformance.checks.drawn import always
from kfac_conformance.execution.session import Session, compare_blocks, dense_blocks, tolerance_for

# the first claimed of these is the request both checks make
FISHER_TYPE_PREFERENCE = ("type-2", "empirical", "mc", "forward-only")
REPEATED_CALL_DIFFERS = (
    "the second call on the same problem differs from the first: state kept across calls?"
)


def _no_side_effects(session: Session, entry: CaseEntry):
    request = session.first_claimed(entry, FISHER_TYPE_PREFERENCE)
    session.side_effects.clear()
    session.call(session.fresh(entry), request)
    if session.side_effects:
        raise CheckFailed("side effects: " + "; ".join(session.side_effects))
    return Measurement()


def _repeatable(session: Session, entry: CaseEntry):
    request = session.first_claimed(entry, FISHER_TYPE_PREFERENCE)
    problem = session.fresh(entry)
    first = session.call(problem, request)
    second = session.call(problem, request)
    measurement = Measurement()
    try:
        compare_blocks(
            second,
            dense_blocks(first),
            problem.layers,
            tolerance_for(problem),
            measurement,
            "second call on the same problem",
        )
    except CheckFailed as failed:
        # the block diagnosis would read a ratio of the two answers as a convention factor
        failed.diagnosis = REPEATED_CALL_DIFFERS
        raise
    return measurement


CHECKS = [
    Check(
        id="side-effects/none",
        statement="the model (parameters, .grad, requires_grad, buffers, hooks, train/eval mode), "
        "the data, the loss's reduction and global torch state (default dtype, RNG, grad mode, "
        "anomaly mode, deterministic algorithms, global hooks) are unchanged",
        source="plain invariance: computing curvature must not alter what it measures",
        kind="guard",
        measure=_no_side_effects,
        fuzz=FuzzProperty(always, order=4),
    ),
    Check(
        id="side-effects/repeatable",
        statement="calling compute twice on the same problem gives the same answer",
        source="plain invariance",
        kind="invariance",
        measure=_repeatable,
        fuzz=FuzzProperty(always, order=4),
    ),
]
