"""Running one item in this process: every outcome of a check becomes a :class:`Result`."""

from __future__ import annotations

import time

from kfac_conformance.checks.base import CheckFailed, CheckSkipped
from kfac_conformance.comparison.scale_records import item_record
from kfac_conformance.execution.calling import CandidateError
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import GlobalState


def execute(session: Session, item: Item, baseline: GlobalState | None = None) -> Result:
    """Run one item in this process; every outcome becomes a :class:`Result`.

    With ``baseline``, global torch state is first reset to it, so that every item starts
    from the same state whatever ran before.
    """
    if baseline is not None:
        baseline.restore_and_report()
    start = time.perf_counter()
    session.side_effects.clear()
    session.answers.clear()
    result = Result(item.check.id, item.entry.id, "passed")
    scale_failure = None
    try:
        measurement = item.check.run(session, item.entry)
        if measurement is not None:
            result.observed, result.tolerance = measurement.observed, measurement.tolerance
    except CheckSkipped as skipped:
        result.status, result.message = "skipped", str(skipped)
    except CheckFailed as failed:
        result.status, result.message = "failed", failed.message
        result.observed, result.tolerance, result.diagnosis, result.evidence = (
            failed.observed,
            failed.tolerance,
            failed.diagnosis,
            failed.evidence,
        )
        scale_failure = failed.scale
    except CandidateError as error:
        session.side_effects.extend(error.side_effects)
        result.status = "error"
        result.message = f"the candidate raised {error}\n{error.traceback_tail}"
    except Exception as error:  # a bug in a check or a candidate that broke its problem
        result.status, result.message = "error", f"the check raised {type(error).__name__}: {error}"
    if session.side_effects and item.check.family != "side-effects":
        note = "note: the candidate had side effects (restored): " + "; ".join(
            dict.fromkeys(session.side_effects)
        )
        result.message = f"{result.message}\n{note}" if result.message else note
    result.scale = item_record(item.check, session.answers, scale_failure)
    result.duration_s = time.perf_counter() - start
    return result


def error_result(item: Item, message: str, start: float) -> Result:
    """An ``error`` result for ``item``, timed from ``start``."""
    return Result(
        item.check.id, item.entry.id, "error", message, duration_s=time.perf_counter() - start
    )
