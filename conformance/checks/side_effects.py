"""Side effects: a candidate leaves the model and global state as it found them, and is repeatable.

Every candidate call is watched (``calling.call_candidate``); here a side effect fails the
check, everywhere else it is restored and noted in the result's message.
"""

from __future__ import annotations

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.problem import Request
from kfac_conformance.session import Session, compare_blocks, tolerance_for


def _first_supported(session: Session, entry: CaseEntry) -> Request:
    for fisher_type in ("type-2", "empirical", "mc", "forward-only"):
        modes = session.supported_bias_modes(entry, fisher_type, "expand")
        if modes:
            return Request(fisher_type, "expand", bias=modes[0])
    raise CheckSkipped("not supported: no fisher type claimed for this problem")


def _no_side_effects(session: Session, entry: CaseEntry):
    request = _first_supported(session, entry)
    session.side_effects.clear()
    session.call(session.fresh(entry), request)
    if session.side_effects:
        raise CheckFailed("side effects: " + "; ".join(session.side_effects))
    return Measurement()


def _repeatable(session: Session, entry: CaseEntry):
    request = _first_supported(session, entry)
    problem = session.fresh(entry)
    first = session.call(problem, request)
    second = session.call(problem, request)
    measurement = Measurement()
    targets = {layer: factors.to_dense() for layer, factors in first.items()}
    compare_blocks(
        second,
        targets,
        problem.layers,
        tolerance_for(problem),
        measurement,
        "second call on the same problem (state accumulated across calls?)",
    )
    return measurement


CHECKS = [
    Check(
        id="side-effects/none",
        statement="the model (parameters, .grad, requires_grad, buffers, hooks, train/eval mode), "
        "the data, the loss's reduction and global torch state (default dtype, RNG, grad mode, "
        "anomaly mode, deterministic algorithms, global hooks) are unchanged",
        source="plain invariance: computing curvature must not alter what it measures",
        applies_to=lambda entry: True,
        run=_no_side_effects,
    ),
    Check(
        id="side-effects/repeatable",
        statement="calling compute twice on the same problem gives the same answer",
        source="plain invariance",
        applies_to=lambda entry: True,
        run=_repeatable,
    ),
]
