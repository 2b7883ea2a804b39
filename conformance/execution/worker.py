"""The worker process of a supervised run: it runs the checks, so that the candidate's crashes,
``os._exit`` calls, hangs and stray threads end in it, never in the process that writes the
report (:mod:`kfac_conformance.execution.supervisor` starts, watches and replaces it).

Wire protocol over one duplex :class:`multiprocessing.connection.Connection`: the worker first
sends ``READY`` (or a :class:`LoadFailed`); then, for each item id it receives, one
:class:`~kfac_conformance.execution.result.Result`. ``None`` received, or the pipe closed, ends it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from dataclasses import dataclass

import torch

from kfac_conformance.contract.loading import load_candidate
from kfac_conformance.execution.execute import execute
from kfac_conformance.execution.plan import case_entries, custom_entries, plan
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.watched_state import seeded_baseline

READY = "ready"


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to rebuild the run's candidate and plan from scratch."""

    candidate: str
    cases: tuple[str, ...] = ()
    profile: str = "default"
    device: str = "cpu"
    threads: int = 1
    launcher: str = "fork"


@dataclass(frozen=True)
class LoadFailed:
    """The worker could not load the candidate or the cases."""

    message: str


def _redirect_output(log_path: str) -> None:
    """Send this process's stdout and stderr (Python's and C's) to the end of ``log_path``;
    the supervisor quotes its last lines when the worker dies."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # line-buffered, so that what a candidate printed before dying reaches the file
    sys.stdout.reconfigure(line_buffering=True)
    faulthandler.enable(file=sys.stderr)  # a segfault leaves its Python traceback there


def serve(connection, config: WorkerConfig, log_path: str) -> None:
    """The worker's main function (the target of its ``multiprocessing.Process``)."""
    # Its own session and process group: Ctrl-C in the terminal is the supervisor's to handle,
    # and killing the group also ends any process the candidate started.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_output(log_path)
    torch.set_num_threads(config.threads)
    try:
        candidate = load_candidate(config.candidate)
        entries = case_entries(config.profile, custom_entries(config.cases))
        items = {item.id: item for item in plan(config.profile, entries)}
    except Exception as error:  # the parent loaded them; report rather than die silently
        connection.send(LoadFailed(f"{type(error).__name__}: {error}"))
        return
    session = Session(candidate, PROFILES[config.profile], config.device, config.launcher)
    baseline = seeded_baseline()
    connection.send(READY)
    while True:
        try:
            item_id = connection.recv()
        except EOFError:  # the supervisor is gone
            return
        if item_id is None:
            return
        item = items.get(item_id)
        if item is None:
            check_id, _, case_id = item_id.partition("[")
            result = Result(check_id, case_id[:-1], "error", f"the worker has no item {item_id}")
        else:
            result = execute(session, item, baseline)
        connection.send(result)
