"""The one check generator and its executor: every front end drives this module."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from kfac_conformance.checks.base import CheckFailed, CheckSkipped
from kfac_conformance.contract.expected_failures import ExpectedFailure, match
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.calling import CallAbandoned, CandidateError, GlobalState, abandon
from kfac_conformance.execution.limits import Stopper
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session

if TYPE_CHECKING:
    from kfac_conformance.execution.supervisor import Supervisor


def execute(session: Session, item: Item, baseline: GlobalState | None = None) -> Result:
    """Run one item in this process; every outcome becomes a :class:`Result`.

    With ``baseline``, global torch state is first reset to it, so that every item starts
    from the same state whatever ran before.
    """
    if baseline is not None:
        baseline.restore_and_report()
    start = time.perf_counter()
    session.side_effects.clear()
    result = Result(item.check.id, item.entry.id, "passed")
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
    result.duration_s = time.perf_counter() - start
    return result


def _execute_in_thread(
    session: Session, item: Item, timeout: float, baseline: GlobalState
) -> Result | None:
    """Run one item in a worker thread; ``None`` when it is still running after ``timeout``.

    A timed-out worker cannot be stopped; it is abandoned (see :func:`calling.abandon`).
    """
    outcome: list[Result | BaseException] = []

    def work() -> None:
        try:
            outcome.append(execute(session, item, baseline))
        except CallAbandoned:
            pass
        except BaseException as error:  # noqa: B036 - reported, never lost with the thread
            outcome.append(error)

    worker = threading.Thread(target=work, daemon=True, name=f"kfac-conformance {item.id}")
    start = time.perf_counter()
    worker.start()
    try:
        worker.join(timeout)
    except BaseException:  # Ctrl-C while waiting: the worker must not touch state any more
        abandon(worker)
        raise
    if worker.is_alive() or not outcome:
        abandon(worker)
        if worker.is_alive():
            return None
    if outcome and isinstance(outcome[0], Result):
        return outcome[0]
    error = outcome[0] if outcome else None
    return error_result(
        item, f"the check's thread ended without a result: {type(error).__name__}: {error}", start
    )


def error_result(item: Item, message: str, start: float) -> Result:
    """An ``error`` result for ``item``, timed from ``start``."""
    return Result(
        item.check.id, item.entry.id, "error", message, duration_s=time.perf_counter() - start
    )


def _child(connection, session: Session, item: Item, baseline: GlobalState) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # OpenMP (libgomp) is not fork-safe: a parallel region in a child forked after the parent
    # used one from another thread deadlocks. One intra-op thread never opens a region.
    torch.set_num_threads(1)
    connection.send(execute(session, item, baseline))
    connection.close()


def describe_death(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"


def _execute_in_process(
    session: Session, item: Item, timeout: float | None, baseline: GlobalState
) -> Result | None:
    """Run one item in a forked child: a crash, ``os._exit`` or hang costs only this item;
    ``None`` when it timed out (the child is killed)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, session, item, baseline), daemon=True)
    start = time.perf_counter()
    process.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            result = receiver.recv()
            process.join(5)
            return result
        return None
    except EOFError:
        process.join()
        return error_result(
            item,
            f"the check's child process died ({describe_death(process.exitcode)}) before it finished",
            start,
        )
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()


def apply_expected_failures(
    result: Result, expected: Sequence[ExpectedFailure], used: set[int]
) -> Result:
    entry = match(list(expected), result.item_id, result.check_id)
    if entry is None:
        return result
    used.add(entry.line)
    if result.status in ("failed", "error"):
        result.message = f"expected failure ({entry.reason}): {result.message}"
        result.status = "xfailed"
    elif result.status == "passed":
        result.status, result.message = "xpassed", f"expected to fail ({entry.reason}) but passed"
    return result


def run_items(
    candidate: Candidate,
    items: Sequence[Item],
    profile: str = "default",
    device: str = "cpu",
    timeout: float | None = None,
    isolate: bool = False,
    expected: Sequence[ExpectedFailure] = (),
    reproduce: Callable[[Item], dict] | None = None,
    used_expected: set[int] | None = None,
    supervisor: Supervisor | None = None,
    stopper: Stopper | None = None,
) -> Iterator[Result]:
    """Execute ``items`` one by one and yield their results as they come.

    With a ``supervisor``, each item runs in its worker process (the candidate object here is
    then not called). Otherwise ``timeout`` (seconds per item; ``None`` or 0 for none) runs
    each item in a worker thread, and ``isolate`` in a forked child process instead. After
    the first timeout in thread mode the abandoned call may still run, so the remaining items
    go to child processes, which start from the run's initial global state (unless CUDA is
    initialised here: CUDA does not survive ``fork``, so they stay in threads and say so).

    ``stopper`` (default: :class:`~kfac_conformance.execution.limits.RunLimits`' defaults) ends the run
    early; the items left then yield ``error`` results ``not run: <reason>``.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be positive (or 0 for none), got {timeout}")
    timeout = timeout or None
    stopper = stopper if stopper is not None else Stopper()
    session = Session(candidate, PROFILES[profile], device)
    used = used_expected if used_expected is not None else set()
    baseline = GlobalState.take()
    isolated = isolate
    try:
        for item in items:
            reason = stopper.stopped()
            if reason is not None:
                result = Result(item.check.id, item.entry.id, "error", f"not run: {reason}")
                if reproduce is not None:
                    result.reproduction = reproduce(item)
                yield result
                continue
            item_timeout, deadline = stopper.item_timeout(timeout)
            if supervisor is not None:
                result = supervisor.execute(item, item_timeout)
                killed = "the worker process was killed and replaced"
            elif isolated:
                result = _execute_in_process(session, item, item_timeout, baseline)
                killed = "the child process was killed"
            elif item_timeout is not None:
                result = _execute_in_thread(session, item, item_timeout, baseline)
                killed = _abandoned_in_thread()
                isolated = result is None and not torch.cuda.is_initialized()
            else:
                result = execute(session, item, baseline)
            timed_out = result is None
            if result is None:
                limit = deadline or f"timed out after {item_timeout:g} s"
                result = Result(
                    item.check.id,
                    item.entry.id,
                    "error",
                    f"{limit} ({killed})",
                    duration_s=item_timeout,
                )
            if reproduce is not None and result.status in ("failed", "error"):
                result.reproduction = reproduce(item)
            baseline.restore_and_report()
            result = apply_expected_failures(result, expected, used)
            stopper.record(result.status, timed_out, deadline)
            yield result
    finally:
        baseline.restore_and_report()


def _abandoned_in_thread() -> str:
    if torch.cuda.is_initialized():
        then = "CUDA is in use, so later checks still run in this process and may be disturbed"
    else:
        then = "later checks run in child processes"
    return f"the call was abandoned in a background thread; {then}"
