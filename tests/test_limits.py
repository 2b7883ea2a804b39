"""Run-level limits: the circuit breaker counts timeouts in a row, --maxfail counts what pytest
counts, and --max-time shortens the last item's limit to the time left."""

from __future__ import annotations

import pytest

from kfac_conformance.execution.limits import RunLimits, Stopper


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_counts_only_timeouts_in_a_row():
    stopper = Stopper(RunLimits(max_consecutive_timeouts=2))
    for status, timed_out in [("error", True), ("passed", False), ("error", True)]:
        stopper.record(status, timed_out)
        assert stopper.stopped() is None
    stopper.record("xfailed", True)  # an expected timeout is still a timeout
    assert stopper.stopped() == "the candidate timed out 2 times in a row"


def test_a_breaker_of_0_never_stops():
    stopper = Stopper(RunLimits(max_consecutive_timeouts=0))
    for _ in range(50):
        stopper.record("error", True)
    assert stopper.stopped() is None


def test_maxfail_counts_failures_and_errors_but_not_expected_failures():
    stopper = Stopper(RunLimits(maxfail=2))
    for status in ("failed", "xfailed", "xpassed", "skipped", "passed"):
        stopper.record(status, False)
    assert stopper.stopped() is None
    stopper.record("error", False)
    assert stopper.stopped() == "--maxfail 2 reached"


def test_max_time_shortens_the_limit_of_the_item_at_the_deadline():
    clock = Clock()
    stopper = Stopper(RunLimits(max_time_s=10), clock)
    assert stopper.item_timeout(30) == (10, "the run reached --max-time 10 s")
    assert stopper.item_timeout(None) == (10, "the run reached --max-time 10 s")
    clock.now += 4
    assert stopper.item_timeout(5) == (5, None)  # the item's own limit comes first
    stopper.record("error", True, None)  # its own timeout: the run goes on
    assert stopper.stopped() is None
    clock.now += 6
    assert stopper.stopped() == "the run reached --max-time 10 s"


def test_a_timeout_at_the_deadline_stops_the_run():
    stopper = Stopper(RunLimits(max_time_s=1), Clock())
    _, reason = stopper.item_timeout(60)
    stopper.record("error", True, reason)
    assert stopper.stopped() == "the run reached --max-time 1 s"


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_consecutive_timeouts": -1}, "--max-consecutive-timeouts must be at least 0"),
        ({"maxfail": 0}, "--maxfail must be at least 1, got 0"),
        ({"max_time_s": 0.0}, "--max-time must be positive, got 0"),
    ],
)
def test_impossible_limits_are_rejected(limits, message):
    with pytest.raises(ValueError, match=message):
        RunLimits(**limits)
