"""Running a list of items: every front end that runs more than one item drives this module.

:func:`run_items` picks the executor once, from the options' mode (:func:`open_executor`),
then runs the items one by one under the run limits. :func:`execute` (one item in this
process) and :func:`apply_expected_failures` also serve the front ends that run single items.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

from kfac_conformance.contract.expected_failures import ExpectedFailure, match
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.execute import execute
from kfac_conformance.execution.executors import (
    ChildExecutor,
    Executor,
    InlineExecutor,
    ThreadExecutor,
    TimedOut,
)
from kfac_conformance.execution.limits import Stopper
from kfac_conformance.execution.options import RunOptions, Specs
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.session import Session
from kfac_conformance.execution.supervisor import Supervisor
from kfac_conformance.execution.watched_state import GlobalState, seeded_baseline
from kfac_conformance.execution.worker import WorkerConfig

__all__ = ["ItemRun", "apply_expected_failures", "execute", "open_executor", "run_items"]


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


def open_executor(
    options: RunOptions, session: Session, baseline: GlobalState, specs: Specs | None
) -> Executor:
    """The executor of ``options.mode``; a supervised one rebuilds the run from ``specs``."""
    if options.mode == "supervised":
        if specs is None:
            raise ValueError(_NEEDS_SPECS)
        config = WorkerConfig(
            specs.candidate,
            specs.cases,
            options.profile,
            options.device,
            options.threads,
            options.launcher,
        )
        return Supervisor(config)
    executors = {"child": ChildExecutor, "thread": ThreadExecutor, "inline": InlineExecutor}
    return executors[options.mode](session, baseline)


_NEEDS_SPECS = (
    "mode 'supervised' rebuilds the candidate and the cases in a worker process from their "
    "spec strings: give specs, or choose mode 'child', 'thread' or 'inline'"
)


class ItemRun:
    """One run of ``items``: iterate it, once, for their results as they come.

    Each item runs by the executor of ``options.mode`` (in supervised mode the worker
    process rebuilds the candidate from ``specs``, and ``candidate`` is not called here).
    The run limits (``options.limits``) can end the run early: the items left then yield
    ``error`` results ``not run: <reason>``, and :attr:`stopped` says why.
    """

    def __init__(
        self,
        candidate: Candidate,
        items: Sequence[Item],
        options: RunOptions,
        specs: Specs | None = None,
    ) -> None:
        if not isinstance(options, RunOptions):
            raise TypeError(
                f"run_items takes RunOptions, got {type(options).__name__} {options!r}; "
                "e.g. RunOptions(profile='quick', mode='inline', timeout_s=None)"
            )
        if options.mode == "supervised" and specs is None:
            raise ValueError(_NEEDS_SPECS)
        self._candidate, self._items, self._options, self._specs = candidate, items, options, specs
        self._stopper: Stopper | None = None
        self._used_expected: set[int] = set()

    @property
    def stopped(self) -> str | None:
        """Why a run limit ended the run early; ``None`` if none did (so far)."""
        return None if self._stopper is None else self._stopper.reason

    def unused_expected_failures(self) -> list[str]:
        """The patterns of the expected failures that matched no result (so far)."""
        return [e.pattern for e in self._options.expected if e.line not in self._used_expected]

    def __iter__(self) -> Generator[Result, None, None]:
        if self._stopper is not None:
            raise RuntimeError("an ItemRun runs once: call run_items again for another run")
        options = self._options
        self._stopper = Stopper(options.limits)
        session = Session(
            self._candidate, PROFILES[options.profile], options.device, options.launcher
        )
        caller = GlobalState.take()
        baseline = seeded_baseline(caller)
        executor = open_executor(options, session, baseline, self._specs)
        try:
            for item in self._items:
                yield self._run_one(executor, item, baseline)
        finally:
            executor.close()
            caller.restore_and_report()  # the caller's generators too, not the items' seed

    def _run_one(self, executor: Executor, item: Item, baseline: GlobalState) -> Result:
        options, stopper = self._options, self._stopper
        reason = stopper.stopped()
        if reason is not None:
            result = Result(item.check.id, item.entry.id, "error", f"not run: {reason}")
            if options.reproduce is not None:
                result.reproduction = options.reproduce(item)
            return result
        item_timeout, deadline = stopper.item_timeout(options.timeout_s)
        outcome = executor.run(item, item_timeout)
        if isinstance(outcome, TimedOut):
            limit = deadline or f"timed out after {item_timeout:g} s"
            result = Result(
                item.check.id,
                item.entry.id,
                "error",
                f"{limit} ({outcome.consequence})",
                duration_s=item_timeout,
            )
        else:
            result = outcome
        if options.reproduce is not None and result.status in ("failed", "error"):
            result.reproduction = options.reproduce(item)
        baseline.restore_and_report()
        result = apply_expected_failures(result, options.expected, self._used_expected)
        stopper.record(result.status, isinstance(outcome, TimedOut), deadline)
        return result


def run_items(
    candidate: Candidate, items: Sequence[Item], options: RunOptions, specs: Specs | None = None
) -> ItemRun:
    """Execute ``items`` one by one; iterate the returned :class:`ItemRun` for the results."""
    return ItemRun(candidate, items, options, specs)
