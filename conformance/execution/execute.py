"""Running one item in this process: every outcome of a check becomes a :class:`Result`."""

from __future__ import annotations

import time

from kfac_conformance.checks.base import CheckFailed, CheckSkipped
from kfac_conformance.comparison.scale_records import item_record
from kfac_conformance.execution.calling import CandidateError, traceback_tail
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import GlobalState

# [project.urls] Issues in pyproject.toml (a test keeps them equal)
ISSUES_URL = "https://github.com/kfac-conformance/kfac-conformance/issues"
# how the message of a result starts when the suite's own code raised
INTERNAL_ERROR = "internal error of kfac-conformance"


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
    session.hygiene.clear()
    result = Result(item.check.id, item.entry.id, "passed")
    scale_failure = None
    try:
        measurement = item.check.run(session, item.entry)
        if measurement is not None:
            result.observed, result.tolerance = measurement.observed, measurement.tolerance
            result.details = measurement.details or None
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
        result.message = error.describe()
    except Exception as error:  # the candidate's exceptions are CandidateError: this is ours
        result.status, result.message = "error", internal_error(error)
    if session.side_effects and item.check.family != "side-effects":
        _add_note(result, "the candidate had side effects (restored)", session.side_effects)
    if session.hygiene and item.check.family != "hygiene":
        # each breach once, without the factors it was found on ("layer '0', factor A: ...")
        breaches = [note.partition(": ")[2] for note in session.hygiene]
        _add_note(result, "the candidate's results were repaired (see hygiene/*)", breaches)
    result.scale = item_record(item.check, session.answers, scale_failure)
    result.duration_s = time.perf_counter() - start
    return result


def internal_error(error: Exception) -> str:
    """The message of an item the suite's own code raised on: a defect of the suite, never a
    verdict on the candidate, with what a bug report needs."""
    return (
        f"{INTERNAL_ERROR} (a defect of the suite, not a verdict on the candidate): "
        f"{type(error).__name__}: {error}\n{traceback_tail(error, error.__traceback__)}"
        f"please report it, with this message, at {ISSUES_URL}"
    )


def _add_note(result: Result, what: str, details: list[str]) -> None:
    note = f"note: {what}: " + "; ".join(dict.fromkeys(details))
    result.message = f"{result.message}\n{note}" if result.message else note


def error_result(item: Item, message: str, start: float) -> Result:
    """An ``error`` result for ``item``, timed from ``start``."""
    return Result(
        item.check.id, item.entry.id, "error", message, duration_s=time.perf_counter() - start
    )
