"""Supervision: the checks run in a persistent worker process, replaced whenever it dies or
hangs, so that nothing a candidate does ends the run (in the manner of pytest-xdist's
"worker crashed, replacing").

Workers are forked by a ``multiprocessing`` fork server that has imported torch and the
harness once (:data:`PRELOAD`): a fresh worker costs a fork plus loading the candidate and
planning, not an interpreter start. A worker runs every item until it dies or times out; the
item it was running then becomes an ``error`` that says what happened, with the last lines
the worker wrote to stdout and stderr, and the next item starts a fresh worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from itertools import count

from kfac_conformance.execution.execute import error_result
from kfac_conformance.execution.executors import TimedOut, describe_death
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.worker import LoadFailed, WorkerConfig, serve

# what the fork server imports once, so that each worker starts with it imported
PRELOAD = ["kfac_conformance.execution.worker"]
TAIL_LINES = 20
TAIL_BYTES = 4096
# a fresh worker loads the candidate and plans; this bounds it apart from the checks' --timeout
START_TIMEOUT_S = 120.0


def _tail(path: str) -> str:
    """The last :data:`TAIL_LINES` lines of ``path`` (at most :data:`TAIL_BYTES` bytes)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])


class _Worker:
    """One worker process, its connection and its output file."""

    def __init__(self, context, config: WorkerConfig, log_path: str) -> None:
        self.log_path = log_path
        self.connection, child_end = context.Pipe()
        self.process = context.Process(
            target=serve, args=(child_end, config, log_path), daemon=True, name="kfac-worker"
        )
        self.process.start()
        child_end.close()

    def send(self, item_id: str) -> None:
        try:
            self.connection.send(item_id)
        except OSError as error:  # it died before reading
            raise EOFError from error

    def receive(self, timeout: float | None) -> object:
        """The next message; :class:`TimeoutError` after ``timeout`` s, :class:`EOFError`
        when the worker died (or sent something unreadable while dying).

        Waits on the process too: a process the candidate started may hold the pipe open
        after the worker died."""
        ready = multiprocessing.connection.wait([self.connection, self.process.sentinel], timeout)
        if not ready:
            raise TimeoutError
        if self.connection not in ready:
            raise EOFError
        try:
            return self.connection.recv()
        except (OSError, EOFError, ValueError) as error:  # a message cut short by its death
            raise EOFError from error

    def end(self) -> int | None:
        """Kill the worker's process group (the worker and whatever the candidate started
        in it) and return the worker's exit code."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
        if self.process.is_alive():  # killed before it made its own group
            self.process.kill()
        self.process.join()
        self.connection.close()
        return self.process.exitcode

    def death(self) -> str:
        """How the worker ended, with the last lines it wrote."""
        self.process.join(5)  # it has closed its pipe: it is exiting or has exited
        how = describe_death(self.end())
        tail = _tail(self.log_path)
        message = f"the candidate ended the process: {how}"
        if tail:
            message += "\nlast lines of the worker's output:\n" + "\n".join(
                f"  {line}" for line in tail.splitlines()
            )
        return message


class Supervisor:
    """Runs items in a worker process; a dead or hung worker costs one item and is replaced.

    The executor of mode ``"supervised"`` (:class:`~kfac_conformance.execution.executors.
    Executor`); :meth:`close` ends the worker.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)  # before the first worker starts it
        self._logs = tempfile.mkdtemp(prefix="kfac-conformance-worker-")
        self._numbers = count(1)
        self._worker: _Worker | None = None

    def close(self) -> None:
        self._discard()
        shutil.rmtree(self._logs, ignore_errors=True)

    def _discard(self) -> None:
        """End the current worker, if any; the next item starts a fresh one."""
        if self._worker is not None:
            self._worker.end()
            self._worker = None

    def run(self, item: Item, timeout: float | None) -> Result | TimedOut:
        """Run ``item`` in the worker; the worker is killed when it times out.

        ``timeout`` bounds the item's run; the start of a fresh worker (loading the candidate
        and planning) is bounded apart, by :data:`START_TIMEOUT_S`.
        """
        start = time.perf_counter()
        problem = self._ready_worker()
        if problem is not None:
            return error_result(item, problem, start)
        try:
            self._worker.send(item.id)
            return self._worker.receive(timeout)
        except TimeoutError:
            self._discard()
            return TimedOut("the worker process was killed and replaced")
        except EOFError:
            return error_result(item, self._death(), start)

    def _death(self) -> str:
        """How the current worker died; the next item starts a fresh one."""
        message = self._worker.death()
        self._worker = None
        return message

    def _ready_worker(self) -> str | None:
        """Start a worker unless one is ready; ``None``, or why no worker can run the item."""
        if self._worker is not None:
            return None
        log_path = os.path.join(self._logs, f"worker-{next(self._numbers)}.log")
        self._worker = _Worker(self._context, self.config, log_path)  # ended by close()
        try:
            message = self._worker.receive(START_TIMEOUT_S)
        except TimeoutError:
            self._discard()
            return f"a fresh worker process was not ready within {START_TIMEOUT_S:g} s"
        except EOFError:
            return self._death()
        if isinstance(message, LoadFailed):
            self._discard()
            return f"the worker could not load the candidate: {message.message}"
        return None
