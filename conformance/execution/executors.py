"""Where the items of a run execute: one executor per mode of :class:`RunOptions`, all
behind :class:`Executor`.

- :class:`InlineExecutor` (``"inline"``): in the calling thread;
- :class:`ThreadExecutor` (``"thread"``): in a worker thread, abandoned when it hangs;
- :class:`ChildExecutor` (``"child"``): in a forked child process per item;
- :class:`~kfac_conformance.execution.supervisor.Supervisor` (``"supervised"``): in a worker
  process that is replaced when it dies or hangs.

The in-process executors share the run's :class:`Session` (and so its caches) and reset
global torch state to the run's ``baseline`` before every item.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from kfac_conformance.execution.calling import CallAbandoned, abandon
from kfac_conformance.execution.execute import error_result, execute
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import GlobalState


@dataclass(frozen=True)
class TimedOut:
    """An item ran past its limit; ``consequence`` says what became of its execution."""

    consequence: str


class Executor(Protocol):
    def run(self, item: Item, timeout: float | None) -> Result | TimedOut:
        """Execute ``item``, giving up after ``timeout`` s (``None``: no limit)."""
        ...

    def close(self) -> None:
        """Release what the executor holds (a worker process); it runs nothing afterwards."""
        ...


def describe_death(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        return f"killed by signal {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"


class InlineExecutor:
    """Each item in the calling thread. Nothing can stop it there, so a limit is not
    enforced: a hang hangs the run (Ctrl-C still stops it cleanly)."""

    def __init__(self, session: Session, baseline: GlobalState) -> None:
        self._session, self._baseline = session, baseline

    def run(self, item: Item, timeout: float | None) -> Result:
        return execute(self._session, item, self._baseline)

    def close(self) -> None:
        pass


class ChildExecutor:
    """Each item in a forked child process: a crash, ``os._exit`` or hang costs only that
    item, and a child that runs past its limit is killed. Every child starts from the state
    of this process when it is forked, after global state is reset to the baseline."""

    def __init__(self, session: Session, baseline: GlobalState) -> None:
        self._session, self._baseline = session, baseline

    def run(self, item: Item, timeout: float | None) -> Result | TimedOut:
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_child, args=(sender, self._session, item, self._baseline), daemon=True
        )
        start = time.perf_counter()
        process.start()
        sender.close()
        try:
            if receiver.poll(timeout):
                result = receiver.recv()
                process.join(5)
                return result
            return TimedOut("the child process was killed")
        except EOFError:
            process.join()
            return error_result(
                item,
                f"the check's child process died ({describe_death(process.exitcode)}) before "
                "it finished",
                start,
            )
        finally:
            if process.is_alive():
                process.kill()
            process.join()
            receiver.close()

    def close(self) -> None:
        pass


def _child(connection, session: Session, item: Item, baseline: GlobalState) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # OpenMP (libgomp) is not fork-safe: a parallel region in a child forked after the parent
    # used one from another thread deadlocks. One intra-op thread never opens a region.
    torch.set_num_threads(1)
    connection.send(execute(session, item, baseline))
    connection.close()


class ThreadExecutor:
    """Each item in a worker thread, so that the run can stop waiting for it.

    A thread cannot be stopped: one still running at its limit is abandoned (see
    :func:`~kfac_conformance.execution.calling.abandon`) and may go on changing global state.
    Policy after the first abandonment: every later item runs in a forked child process
    (:class:`ChildExecutor`), which starts from the baseline state whatever the abandoned call
    does, unless CUDA is initialised here (CUDA does not survive ``fork``): the items then
    stay in threads, and the timeout says so.

    Without a limit nothing needs abandoning, so the item runs in the calling thread, where
    Ctrl-C reaches it directly.
    """

    def __init__(self, session: Session, baseline: GlobalState) -> None:
        self._session, self._baseline = session, baseline
        self._after_abandonment: ChildExecutor | None = None

    def run(self, item: Item, timeout: float | None) -> Result | TimedOut:
        if self._after_abandonment is not None:
            return self._after_abandonment.run(item, timeout)
        if timeout is None:
            return execute(self._session, item, self._baseline)
        outcome = self._run_in_thread(item, timeout)
        if isinstance(outcome, TimedOut) and not torch.cuda.is_initialized():
            self._after_abandonment = ChildExecutor(self._session, self._baseline)
        return outcome

    def _run_in_thread(self, item: Item, timeout: float) -> Result | TimedOut:
        outcome: list[Result | BaseException] = []

        def work() -> None:
            try:
                outcome.append(execute(self._session, item, self._baseline))
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
                return TimedOut(_abandoned_in_thread())
        if outcome and isinstance(outcome[0], Result):
            return outcome[0]
        error = outcome[0] if outcome else None
        return error_result(
            item,
            f"the check's thread ended without a result: {type(error).__name__}: {error}",
            start,
        )

    def close(self) -> None:
        if self._after_abandonment is not None:
            self._after_abandonment.close()


def _abandoned_in_thread() -> str:
    if torch.cuda.is_initialized():
        then = "CUDA is in use, so later checks still run in this process and may be disturbed"
    else:
        then = "later checks run in child processes"
    return f"the call was abandoned in a background thread; {then}"
