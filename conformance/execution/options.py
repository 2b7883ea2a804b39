"""How a run executes (:class:`RunOptions`, checked when they are made), and the spec strings
that name what it runs (:class:`Specs`).

The default options are the command line's defaults: each item runs in a supervised worker
process, with :data:`DEFAULT_TIMEOUT_S` seconds per item and the default run limits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.execution.limits import RunLimits
from kfac_conformance.execution.profiles import PROFILES

if TYPE_CHECKING:
    from kfac_conformance.execution.plan import Item
    from kfac_conformance.reports.report import Report

DEFAULT_TIMEOUT_S = 300.0
Mode = Literal["supervised", "child", "thread", "inline"]
MODES: tuple[str, ...] = get_args(Mode)
Launcher = Literal["fork", "torchrun"]
LAUNCHERS: tuple[str, ...] = get_args(Launcher)
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where and how the items of a run execute; every field is checked on construction.

    ``mode`` picks where each item runs (see :mod:`kfac_conformance.execution.executors`):

    - ``"supervised"``: in a worker process that is replaced when it dies or hangs; it
      rebuilds the candidate and the custom cases from their spec strings;
    - ``"child"``: in a forked child process per item (CPU only);
    - ``"thread"``: in this process, in a worker thread that is abandoned when it hangs;
    - ``"inline"``: in the calling thread, which nothing can stop, so it takes no timeout.

    ``timeout_s`` bounds each item (``None``: no limit). ``limits`` bound the whole run.
    ``expected`` are the expected failures. ``reproduce`` gives a failed item's reproduction
    (``Result.reproduction``). ``progress`` is called by
    :func:`kfac_conformance.check_candidate` with its report once when the run starts and
    again after each result (``run_items`` has no report and does not call it).
    ``threads`` is the number of torch intra-op threads of the supervised worker process.
    ``launcher`` says how the distributed checks start their process groups: ``"fork"``
    forks every rank; ``"torchrun"``, in a process that ``torchrun`` started, forks only
    this process's rank (:mod:`kfac_conformance.execution.torchrun`).
    """

    profile: str = "default"
    device: str = "cpu"
    mode: Mode = "supervised"
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    limits: RunLimits = RunLimits()
    threads: int = 1
    launcher: Launcher = "fork"
    expected: Sequence[ExpectedFailure] = ()
    reproduce: Callable[[Item], dict] | None = None
    progress: Callable[[Report], None] | None = None

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; choose one of {sorted(PROFILES)}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {list(MODES)}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.launcher!r}; choose one of {list(LAUNCHERS)}")
        self._check_timeout()
        if not isinstance(self.limits, RunLimits):
            raise TypeError(f"limits must be a RunLimits, got {type(self.limits).__name__}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an integer of at least 1, got {self.threads!r}")
        # a tuple, so that the options stay immutable whatever sequence was given
        object.__setattr__(self, "expected", tuple(self.expected))
        strays = [entry for entry in self.expected if not isinstance(entry, ExpectedFailure)]
        if strays:
            raise TypeError(f"expected must hold ExpectedFailure entries, got {strays[0]!r}")
        for name in ("reproduce", "progress"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        if self.mode == "child" and self.device != "cpu":
            raise ValueError(
                "mode 'child' forks, and CUDA does not survive fork: use it with device 'cpu'"
            )

    def _check_timeout(self) -> None:
        timeout = self.timeout_s
        if timeout is None:
            return
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout_s must be a number of seconds or None, got {timeout!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(
                "the per-item timeout must be positive and finite (seconds), or None for no "
                f"limit; got timeout_s={timeout:g}"
            )
        if self.mode == "inline":
            raise ValueError(
                "mode 'inline' runs each item in the calling thread, where nothing can stop "
                f"it, so it takes no timeout: give timeout_s=None (got {timeout:g}) or choose "
                "mode 'thread'"
            )

    @property
    def execution(self) -> str:
        """The report's name for where the items ran: ``worker``, ``isolate`` or ``in-process``."""
        return {"supervised": "worker", "child": "isolate"}.get(self.mode, "in-process")


@dataclass(frozen=True)
class Specs:
    """The spec strings that name a run's candidate and custom cases, as ``--candidate`` and
    ``--case`` take them: what a supervised worker process rebuilds them from, and what a
    reproduction command names."""

    candidate: str
    cases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.candidate, str):
            raise TypeError(f"the candidate spec must be a string, got {self.candidate!r}")
        object.__setattr__(self, "cases", tuple(self.cases))
        strays = [case for case in self.cases if not isinstance(case, str)]
        if strays:
            raise TypeError(f"case specs must be strings, got {strays[0]!r}")
