"""Running items from the tests: the options most of them use, and the keyword form in which
the hostile tests vary the execution."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution import runner
from kfac_conformance.execution.options import RunOptions
from kfac_conformance.execution.plan import Item


def inline(profile: str = "default", **fields) -> RunOptions:
    """Each item in the test's own thread, without a time limit."""
    return RunOptions(profile=profile, mode="inline", timeout_s=None, **fields)


def run_items(
    candidate: Candidate,
    items: Sequence[Item],
    profile: str = "default",
    *,
    timeout: float | None = None,
    isolate: bool = False,
) -> runner.ItemRun:
    """The items in child processes with ``isolate``, else in threads under a ``timeout``,
    else inline."""
    mode = "child" if isolate else "inline" if timeout is None else "thread"
    options = RunOptions(profile=profile, mode=mode, timeout_s=timeout)
    return runner.run_items(candidate, items, options)


def quick_run_command() -> list[str]:
    """``kfac-conformance run --profile quick -q`` as a user starts it, in this interpreter."""
    return [
        sys.executable,
        "-m",
        "kfac_conformance.frontends.cli",
        "run",
        "--profile",
        "quick",
        "-q",
    ]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
