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
import multiprocessing.forkserver
import os
import shutil
import signal
import tempfile
import time
from itertools import count

from kfac_conformance.runner import Item, Result, describe_death, error_result
from kfac_conformance.worker import READY, LoadFailed, WorkerConfig, serve

# what the fork server imports once, so that each worker starts with it imported
PRELOAD = ["kfac_conformance.worker"]
TAIL_LINES = 20
TAIL_BYTES = 4096


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
        self.ready = False

    def send(self, item_id: str) -> None:
        try:
            self.connection.send(item_id)
        except OSError as error:  # it died before reading
            raise EOFError from error

    def receive(self, timeout: float | None) -> object:
        """The next message; :class:`TimeoutError` after ``timeout`` s, :class:`EOFError`
        when the worker died (or sent something unreadable while dying)."""
        if not self.connection.poll(timeout):
            raise TimeoutError
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

    Use as a context manager: leaving it ends the worker.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        # the fork server imports torch while this process loads the candidate and plans
        multiprocessing.forkserver.ensure_running()
        self._logs = tempfile.mkdtemp(prefix="kfac-conformance-worker-")
        self._numbers = count(1)
        self._worker: _Worker | None = None
        self.workers_started = 0

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.end()
            self._worker = None
        shutil.rmtree(self._logs, ignore_errors=True)

    def _start(self) -> _Worker:
        self.workers_started += 1
        log_path = os.path.join(self._logs, f"worker-{next(self._numbers)}.log")
        return _Worker(self._context, self.config, log_path)

    def execute(self, item: Item, timeout: float | None) -> Result | None:
        """Run ``item`` in the worker; ``None`` when it timed out (the worker is then killed).

        ``timeout`` bounds the item's run, and separately the start of a fresh worker.
        """
        start = time.perf_counter()
        if self._worker is None:
            self._worker = self._start()
        worker = self._worker
        try:
            if not worker.ready:
                message = worker.receive(timeout)
                if isinstance(message, LoadFailed):
                    raise _Failed(f"the worker could not load the candidate: {message.message}")
                assert message == READY, message
                worker.ready = True
            worker.send(item.id)
            result = worker.receive(timeout)
        except TimeoutError:
            self._discard()
            return None
        except EOFError:
            self._worker = None
            result = error_result(item, worker.death(), start)
        except _Failed as failure:
            self._discard()
            result = error_result(item, str(failure), start)
        return result

    def _discard(self) -> None:
        if self._worker is not None:
            self._worker.end()
            self._worker = None


class _Failed(Exception):
    """The worker cannot run items; the message says why."""
