"""The programmatic API: :func:`check_candidate` runs the checks and returns the report.

It is what ``kfac-conformance run`` does, without the command line: the command parses its
arguments, calls :func:`check_candidate` and writes what it returns.
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from kfac_conformance.contract.expected_failures import (
    ExpectedFailure,
    parse_expected_failures,
    read_expected_failures,
)
from kfac_conformance.contract.loading import (
    ProblemFactory,
    SpecError,
    load_candidate,
    missing_members,
)
from kfac_conformance.contract.problem import Candidate
from kfac_conformance.execution.options import RunOptions, Specs
from kfac_conformance.execution.plan import Item, case_entries, custom_entries, plan
from kfac_conformance.execution.runner import ItemRun, run_items
from kfac_conformance.reports.report import Report, describe_capabilities

T = TypeVar("T")
ExpectedFailures = str | Path | Sequence[str | ExpectedFailure]


class NothingSelected(ValueError):
    """The selection matches no item of the plan."""

    def __init__(self, select: Sequence[str]) -> None:
        super().__init__(f"no check matches select={list(select)}")
        self.select = list(select)


def check_candidate(
    candidate: Candidate | str,
    *,
    profile: str = "default",
    select: Sequence[str] | str = (),
    cases: Sequence[str | ProblemFactory] | str = (),
    xfail: ExpectedFailures | None = None,
    options: RunOptions | None = None,
) -> Report:
    """Run the checks of ``profile`` against ``candidate`` and return the finished report.

    ``candidate``: a :class:`Candidate`, or a spec string as ``--candidate`` takes it (a
    registered name, ``module:attr`` or ``file.py:attr``). ``select``: globs over item ids
    (``check_id[case_id]``), as ``--select``. ``cases``: extra case factories, spec strings
    (as ``--case``) or zero-argument callables returning a :class:`Problem` or a list of
    them. ``xfail``: the path of an expected-failures file, or its entries (lines of such a
    file, or :class:`ExpectedFailure`). A lone string for ``select`` or ``cases`` is one
    glob or one spec.

    ``profile`` is the run's profile unless it is left at ``"default"`` and
    ``options.profile`` names another.

    ``options`` (:class:`RunOptions`) say how the items run; by default ``RunOptions()``,
    the command line's defaults: each item in a supervised worker process, which rebuilds
    the run from spec strings. A :class:`Candidate` object or a callable case cannot be
    rebuilt there, so for them the default is ``RunOptions(mode="thread")`` (as
    ``--no-supervise``).

    A Ctrl-C (``KeyboardInterrupt``) marks the report interrupted and is raised again; the
    report reaches ``options.progress``, which is called with it when the run starts and
    after each result.
    """
    select = _strings("select", select)
    cases = _case_sources(cases)
    specs = _specs(candidate, cases)
    options = _options(options, profile, specs)
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {options.device!r} was asked for but CUDA is not available")
    spec = candidate if isinstance(candidate, str) else _describe(candidate)
    if isinstance(candidate, str):
        candidate = _load(f"candidate {spec!r}", lambda: load_candidate(spec))
    if xfail is not None:
        if options.expected:
            raise ValueError("expected failures given twice: pass xfail or options.expected")
        options = dataclasses.replace(options, expected=_expected_failures(xfail))
    custom = _load(f"cases {list(cases)}", lambda: custom_entries(cases)) if cases else []
    items = plan(options.profile, case_entries(options.profile, custom), select)
    if not items:
        raise NothingSelected(select)
    if options.reproduce is None:
        options = dataclasses.replace(options, reproduce=_reproduction(specs, options))
    report = _new_report(spec, candidate, items, options)
    _run_into(report, run_items(candidate, items, options, specs), options.progress)
    return report


def _run_into(report: Report, run: ItemRun, progress: Callable[[Report], None] | None) -> None:
    """Append the results of ``run`` to ``report`` as they come, calling ``progress``."""
    progress = progress or _no_progress
    results = iter(run)
    try:
        progress(report)
        for result in results:
            report.results.append(result)
            progress(report)
        report.complete, report.stopped = True, run.stopped
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        report.interruption = signal.Signals(number).name
        raise
    finally:
        results.close()  # ends the executor (a worker process) now, whatever stopped the loop
        report.unused_expected_failures = run.unused_expected_failures()


def _no_progress(report: Report) -> None:
    pass


def _strings(name: str, values: Sequence[str] | str) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    strays = [value for value in values if not isinstance(value, str)]
    if strays:
        raise TypeError(f"{name} must hold strings, got {strays[0]!r}")
    return values


def _case_sources(cases: Sequence[str | ProblemFactory] | str) -> list[str | ProblemFactory]:
    cases = [cases] if isinstance(cases, str) else list(cases)
    strays = [case for case in cases if not (isinstance(case, str) or callable(case))]
    if strays:
        raise TypeError(f"cases must be spec strings or case factories, got {strays[0]!r}")
    return cases


def _specs(candidate: Candidate | str, cases: list[str | ProblemFactory]) -> Specs | None:
    """The run's spec strings; ``None`` when an object or a callable stands for a part."""
    if not isinstance(candidate, str):
        missing = missing_members(candidate)
        if missing:
            raise TypeError(
                f"candidate must be a Candidate (name, capabilities, compute()) or a spec "
                f"string; {type(candidate).__name__} lacks {missing}"
            )
        return None
    if not all(isinstance(case, str) for case in cases):
        return None
    return Specs(candidate, tuple(cases))


def _options(options: RunOptions | None, profile: str, specs: Specs | None) -> RunOptions:
    if options is None:
        return RunOptions(profile=profile, mode="supervised" if specs else "thread")
    if not isinstance(options, RunOptions):
        raise TypeError(f"options must be RunOptions or None, got {type(options).__name__}")
    if profile != "default":
        if options.profile not in ("default", profile):
            raise ValueError(
                f"profile={profile!r} and options.profile={options.profile!r} disagree: give "
                "the profile once"
            )
        options = dataclasses.replace(options, profile=profile)
    if options.mode == "supervised" and specs is None:
        raise ValueError(
            "mode 'supervised' rebuilds the candidate and the cases in a worker process from "
            "spec strings: pass the candidate and the cases as specs, or choose mode 'child', "
            "'thread' or 'inline'"
        )
    return options


def _load(what: str, load: Callable[[], T]) -> T:
    """``load()``; user code that fails while being imported or called is a spec error."""
    try:
        return load()
    except (SpecError, FileNotFoundError):
        raise
    except Exception as error:  # the user's module or factory raised
        raise SpecError(f"loading {what} failed: {type(error).__name__}: {error}") from error


def _expected_failures(xfail: ExpectedFailures) -> list[ExpectedFailure]:
    if isinstance(xfail, (str, Path)):
        return read_expected_failures(xfail)
    entries = list(xfail)
    if all(isinstance(entry, ExpectedFailure) for entry in entries):
        return entries
    if all(isinstance(entry, str) for entry in entries):
        return parse_expected_failures(entries)
    raise TypeError(
        "xfail must be a file path, or lines of an expected-failures file, or "
        "ExpectedFailure entries (not a mix)"
    )


def _describe(candidate: Candidate) -> str:
    """What the report names an object candidate by (it has no spec)."""
    kind = type(candidate)
    return f"<{kind.__module__}.{kind.__qualname__} object>"


def _reproduction(specs: Specs | None, options: RunOptions) -> Callable[[Item], dict]:
    """A failed item's reproduction: the command that runs it alone (when spec strings name
    the whole run) and a description of its problem."""

    def reproduce(item: Item) -> dict:
        try:
            problem = item.entry.make_problem().describe()
        except Exception as error:  # the description must never hide the result
            problem = {"error": f"could not describe the problem: {error}"}
        if specs is None:
            return {"problem": problem}
        return {"command": shlex.join(_command(specs, options, item)), "problem": problem}

    return reproduce


def _command(specs: Specs, options: RunOptions, item: Item) -> list[str]:
    command = ["kfac-conformance", "run", "--candidate", specs.candidate]
    command += ["--profile", options.profile]
    for case in specs.cases:
        command += ["--case", case]
    if options.device != "cpu":
        command += ["--device", options.device]
    if options.mode == "child":
        command.append("--isolate")
    if options.mode in ("thread", "inline"):
        command.append("--no-supervise")
    return [*command, "--select", item.id]


def _new_report(spec: str, candidate: Candidate, items: list[Item], options: RunOptions) -> Report:
    return Report(
        spec,
        candidate.name,
        getattr(candidate, "version", None),
        options.profile,
        options.device,
        [item.id for item in items],
        timeout_s=options.timeout_s,
        isolate=options.mode == "child",
        capabilities=describe_capabilities(getattr(candidate, "capabilities", None)),
        execution=options.execution,
        max_consecutive_timeouts=options.limits.max_consecutive_timeouts,
        maxfail=options.limits.maxfail,
        max_time_s=options.limits.max_time_s,
    )
