"""The one check generator and its executor: every front end drives this module."""

from __future__ import annotations

import fnmatch
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from kfac_conformance import fixtures
from kfac_conformance.calling import CandidateError
from kfac_conformance.cases import AGREEMENT_CASES, CANONICAL_CASES, Case
from kfac_conformance.checks import ALL_CHECKS, CaseEntry, Check, CheckFailed, CheckSkipped
from kfac_conformance.checks.robustness import BUILTIN_ENTRIES
from kfac_conformance.expected_failures import ExpectedFailure, match
from kfac_conformance.loading import load_case_factory
from kfac_conformance.problem import Candidate
from kfac_conformance.session import PROFILES, Session

QUICK_CASE_IDS = frozenset(
    {
        "one-datum-mlp[tanh-ce-sum]",
        "one-datum-mlp[sigmoid-bce-mean]",
        "deep-linear[mse-mean-3batches]",
        "expand-deep-linear[2-axes]",
        "reduce-deep-linear[pool-in-middle]",
        "conv-reduce[stride2-pad1-mean-pool]",
        "conv-expand[last-layer-stride2-pad1-dil2]",
        "mlp[tanh-ce-batch]",
        "sequence[tanh-ce-per-position]",
    }
)


@dataclass
class Result:
    check_id: str
    case_id: str
    status: str
    message: str = ""
    observed: float | None = None
    tolerance: float | None = None
    diagnosis: str | None = None
    reproduction: dict = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def item_id(self) -> str:
        return f"{self.check_id}[{self.case_id}]"

    def to_json(self) -> dict:
        return {"id": self.item_id, **asdict(self)}


@dataclass(frozen=True)
class Item:
    check: Check
    entry: CaseEntry

    @property
    def id(self) -> str:
        return f"{self.check.id}[{self.entry.id}]"


def _case_entry(case: Case) -> CaseEntry:
    if case.id in fixtures.available_case_ids():
        return CaseEntry(case.id, lambda: fixtures.load_problem(case.id), case)
    return CaseEntry(case.id, case.make_problem, case)


def custom_entries(specs: Sequence[str]) -> list[CaseEntry]:
    entries = []
    for spec in specs:
        factory = load_case_factory(spec)
        for index, problem in enumerate(factory()):
            entries.append(CaseEntry(problem.case_id, lambda f=factory, i=index: f()[i]))
    return entries


def case_entries(profile: str, custom: Sequence[CaseEntry] = ()) -> list[CaseEntry]:
    cases = [*CANONICAL_CASES, *AGREEMENT_CASES]
    if PROFILES[profile].quick:
        cases = [case for case in cases if case.id in QUICK_CASE_IDS]
    return [*(_case_entry(case) for case in cases), *BUILTIN_ENTRIES, *custom]


def plan(
    profile: str,
    entries: Sequence[CaseEntry],
    select: Sequence[str] = (),
    checks: Sequence[Check] = ALL_CHECKS,
) -> list[Item]:
    """Every (check, case) pair of the profile, in a stable order, filtered by ``select`` globs."""
    items = [
        Item(check, entry)
        for check in checks
        if profile in check.profiles
        for entry in entries
        if entry.builtin == check.on_builtin and check.applies_to(entry)
    ]
    if select:
        items = [item for item in items if any(fnmatch.fnmatchcase(item.id, g) for g in select)]
    return items


def execute(session: Session, item: Item) -> Result:
    """Run one item in this process; every outcome becomes a :class:`Result`."""
    start = time.perf_counter()
    session.side_effects.clear()
    result = Result(item.check.id, item.entry.id, "passed")
    try:
        measurement = item.check.run(session, item.entry)
        if measurement is not None:
            result.observed, result.tolerance = measurement.observed, measurement.tolerance
        if session.side_effects and item.check.family != "side-effects":
            result.message = "note: the candidate had side effects (restored): " + "; ".join(
                session.side_effects
            )
    except CheckSkipped as skipped:
        result.status, result.message = "skipped", str(skipped)
    except CheckFailed as failed:
        result.status, result.message = "failed", failed.message
        result.observed, result.tolerance, result.diagnosis = (
            failed.observed,
            failed.tolerance,
            failed.diagnosis,
        )
    except CandidateError as error:
        result.status = "error"
        result.message = f"the candidate raised {error}\n{error.traceback_tail}"
    except Exception as error:  # a bug in a check or a candidate that broke its problem
        result.status, result.message = "error", f"the check raised {type(error).__name__}: {error}"
    result.duration_s = time.perf_counter() - start
    return result


def _execute_in_thread(session: Session, item: Item, timeout: float) -> Result:
    box: list[Result] = []
    worker = threading.Thread(target=lambda: box.append(execute(session, item)), daemon=True)
    worker.start()
    worker.join(timeout)
    if box:
        return box[0]
    return Result(
        item.check.id, item.entry.id, "error", f"timed out after {timeout:g} s", duration_s=timeout
    )


def _child(connection, session: Session, item: Item) -> None:
    connection.send(execute(session, item))
    connection.close()


def _execute_in_process(session: Session, item: Item, timeout: float) -> Result:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, session, item), daemon=True)
    start = time.perf_counter()
    process.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            result = receiver.recv()
            process.join(5)
            return result
    except EOFError:
        pass
    finally:
        if process.is_alive():
            process.kill()
        process.join()
    elapsed = time.perf_counter() - start
    if elapsed >= timeout:
        return Result(
            item.check.id,
            item.entry.id,
            "error",
            f"timed out after {timeout:g} s",
            duration_s=elapsed,
        )
    return Result(
        item.check.id,
        item.entry.id,
        "error",
        f"the candidate's process died (exit code {process.exitcode}) before the check finished",
        duration_s=elapsed,
    )


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
) -> Iterator[Result]:
    """Execute ``items`` one by one and yield their results as they come."""
    session = Session(candidate, PROFILES[profile], device)
    used = used_expected if used_expected is not None else set()
    for item in items:
        if isolate:
            result = _execute_in_process(session, item, timeout or float("inf"))
        elif timeout:
            result = _execute_in_thread(session, item, timeout)
        else:
            result = execute(session, item)
        if reproduce is not None and result.status in ("failed", "error"):
            result.reproduction = reproduce(item)
        torch.set_grad_enabled(True)
        yield apply_expected_failures(result, expected, used)
