"""Run-level limits: when a run stops early, and why.

- a circuit breaker: after ``max_consecutive_timeouts`` timeouts in a row, the candidate is
  taken to hang on everything, so the worst case costs that many ``--timeout`` s, not one per
  item;
- ``maxfail``: after that many failed or errored items, as pytest's ``--maxfail``;
- ``max_time_s``: a wall-clock bound on the whole run; an item still running at the deadline
  times out there.

Once a limit is reached, every remaining item ends as ``error`` with ``not run: <reason>``, so
the report still has a status for every planned item.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_CONSECUTIVE_TIMEOUTS = 3


@dataclass(frozen=True)
class RunLimits:
    max_consecutive_timeouts: int = DEFAULT_MAX_CONSECUTIVE_TIMEOUTS  # 0: no breaker
    maxfail: int | None = None
    max_time_s: float | None = None

    def __post_init__(self) -> None:
        """Reject impossible limits; the messages name the CLI options that set them."""
        if self.max_consecutive_timeouts < 0:
            raise ValueError(
                "--max-consecutive-timeouts must be at least 0, "
                f"got {self.max_consecutive_timeouts}"
            )
        if self.maxfail is not None and self.maxfail < 1:
            raise ValueError(f"--maxfail must be at least 1, got {self.maxfail}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"--max-time must be positive, got {self.max_time_s:g}")


class Stopper:
    """Tracks a run against its :class:`RunLimits`; ``reason`` is set once one is reached."""

    def __init__(
        self, limits: RunLimits = RunLimits(), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits, self._clock = limits, clock
        self._deadline = None if limits.max_time_s is None else clock() + limits.max_time_s
        self.reason: str | None = None
        self._timeouts_in_a_row = 0
        self._failures = 0

    def _out_of_time(self) -> str:
        return f"the run reached --max-time {self.limits.max_time_s:g} s"

    def stopped(self) -> str | None:
        """The reason the run stops before the next item, or ``None`` to go on."""
        if self.reason is None and self._deadline is not None and self._clock() >= self._deadline:
            self.reason = self._out_of_time()
        return self.reason

    def item_timeout(self, timeout: float | None) -> tuple[float | None, str | None]:
        """The next item's limit: ``timeout``, shortened to the time the run has left; and,
        when the run's deadline is what limits it, the reason to give if it is reached."""
        if self._deadline is None:
            return timeout, None
        left = max(self._deadline - self._clock(), 0.0)
        if timeout is None or left < timeout:
            return left, self._out_of_time()
        return timeout, None

    def record(self, status: str, timed_out: bool, deadline_reason: str | None = None) -> None:
        """Count one item's outcome (after expected failures are applied)."""
        if timed_out and deadline_reason is not None:
            self.reason = deadline_reason
            return
        self._timeouts_in_a_row = self._timeouts_in_a_row + 1 if timed_out else 0
        breaker = self.limits.max_consecutive_timeouts
        if breaker and self._timeouts_in_a_row >= breaker:
            self.reason = f"the candidate timed out {breaker} times in a row"
        if status in ("failed", "error"):
            self._failures += 1
            if self.limits.maxfail is not None and self._failures >= self.limits.maxfail:
                self.reason = self.reason or f"--maxfail {self.limits.maxfail} reached"
