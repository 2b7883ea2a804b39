"""``kfac-conformance``: run the check catalogue against a candidate from the command line."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

from kfac_conformance import fuzz_command
from kfac_conformance.catalogue import ALL_CHECKS
from kfac_conformance.expected_failures import read_expected_failures
from kfac_conformance.loading import SpecError, load_candidate, registered_names
from kfac_conformance.profiles import PROFILES
from kfac_conformance.report import Report, summary_text
from kfac_conformance.runner import Item, case_entries, custom_entries, plan, run_items

DEFAULT_TIMEOUT = 300.0
T = TypeVar("T")
_PROGRESS = {
    "passed": ".",
    "failed": "F",
    "error": "E",
    "skipped": "s",
    "xfailed": "x",
    "xpassed": "X",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfac-conformance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the checks against a candidate")
    run.add_argument(
        "--candidate", default="kfac_ref", help="registered name, module:attr or file.py:attr"
    )
    run.add_argument(
        "--case", action="append", default=[], help="extra problems: module:attr or file.py:attr"
    )
    run.add_argument("--profile", choices=sorted(PROFILES), default="default")
    run.add_argument("--select", action="append", default=[], help="glob over 'check_id[case_id]'")
    run.add_argument(
        "--xfail", help="expected-failures file: one id or glob per line, reason after '#'"
    )
    run.add_argument(
        "--report-json", help="write the JSON report here (rewritten after every check)"
    )
    run.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    run.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per check, 0 for no limit (default {DEFAULT_TIMEOUT:g}); a check that "
        "runs longer becomes an error and the run goes on",
    )
    run.add_argument(
        "--isolate",
        action="store_true",
        help="run every check in a forked child process (a candidate that crashes or calls "
        "os._exit costs one check, not the run); CPU only",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the problems are tiny, and more threads only "
        "add synchronisation; see docs/performance.md)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    listing = commands.add_parser("list-checks", help="list the checks and the cases they run on")
    listing.add_argument("--profile", choices=sorted(PROFILES), default="default")
    listing.add_argument(
        "--verbose", "-v", action="store_true", help="also list every check[case] item"
    )
    commands.add_parser("list-candidates", help="list the registered candidates")
    fuzz_command.add_parser(commands)
    return parser


def _reproduction(args: argparse.Namespace):
    def reproduce(item: Item) -> dict:
        command = [
            "kfac-conformance",
            "run",
            "--candidate",
            args.candidate,
            "--profile",
            args.profile,
        ]
        for case in args.case:
            command += ["--case", case]
        if args.device != "cpu":
            command += ["--device", args.device]
        if args.isolate:
            command.append("--isolate")
        command += ["--select", item.id]
        try:
            problem = item.entry.make_problem().describe()
        except Exception as error:  # the description must never hide the result
            problem = {"error": f"could not describe the problem: {error}"}
        return {"command": shlex.join(command), "problem": problem}

    return reproduce


class UsageError(Exception):
    """The command line asks for something impossible; exit code 2."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the report is written, marked incomplete."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def interrupt(signal_number: int, frame: object) -> None:
        raise RunInterrupted(signal_number)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_usage(args: argparse.Namespace) -> None:
    if args.timeout < 0:
        raise UsageError(f"--timeout must be positive, or 0 for no limit; got {args.timeout:g}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but CUDA is not available")
        if args.isolate:
            raise UsageError(
                "--isolate cannot be combined with --device cuda: it forks, and CUDA does not "
                "survive fork; use --timeout for hangs instead"
            )


def _load(what: str, load: Callable[[], T]) -> T:
    """``load()``; user code that fails while being imported or called is a usage error."""
    try:
        return load()
    except (SpecError, FileNotFoundError):
        raise
    except Exception as error:  # the user's module or factory raised
        raise UsageError(f"loading {what} failed: {type(error).__name__}: {error}") from error


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    torch.set_num_threads(args.threads)
    candidate = _load(f"candidate {args.candidate!r}", lambda: load_candidate(args.candidate))
    expected = read_expected_failures(args.xfail) if args.xfail else []
    custom = _load(f"cases {args.case}", lambda: custom_entries(args.case))
    items = plan(args.profile, case_entries(args.profile, custom), args.select)
    if not items:
        raise UsageError(f"no check matches --select {args.select}")
    report = Report(
        args.candidate,
        candidate.name,
        getattr(candidate, "version", None),
        args.profile,
        args.device,
        [item.id for item in items],
        timeout_s=args.timeout or None,
        isolate=args.isolate,
    )
    used: set[int] = set()
    progress = not args.quiet
    exit_code = None
    try:
        with _terminate_as_interrupt():
            if args.report_json:  # on disk from the start: a run that dies still leaves it
                report.write(args.report_json)
            results = run_items(
                candidate,
                items,
                args.profile,
                args.device,
                args.timeout,
                args.isolate,
                expected,
                _reproduction(args),
                used,
            )
            for index, result in enumerate(results, 1):
                report.results.append(result)
                if args.report_json:
                    report.write(args.report_json)
                if progress:
                    end = "\n" if index % 60 == 0 or index == len(items) else ""
                    print(_PROGRESS[result.status], end=end, file=sys.stderr, flush=True)
        report.complete = True
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        report.interruption = signal.Signals(number).name
        exit_code = 128 + number
        print(
            f"\ninterrupted by {report.interruption}: the report is marked incomplete",
            file=sys.stderr,
        )
    report.unused_expected_failures = [e.pattern for e in expected if e.line not in used]
    if args.report_json:
        report.write(args.report_json)
    print(summary_text(report))
    if exit_code is not None:
        return exit_code
    return 0 if report.succeeded else 1


def list_checks(args: argparse.Namespace) -> int:
    items = plan(args.profile, case_entries(args.profile))
    for check in ALL_CHECKS:
        cases = [item.entry.id for item in items if item.check is check]
        print(
            f"{check.id}  ({len(cases)} cases)\n    {check.statement}\n    source: {check.source}"
        )
        if args.verbose:
            for case in cases:
                print(f"      {check.id}[{case}]")
    return 0


def list_candidates(args: argparse.Namespace) -> int:
    for name in registered_names():
        print(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 no check failed or errored, 1 one did, 2 usage error, 128 + N signal N."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # argparse's own usage errors (2) and --help (0)
        return exit.code if isinstance(exit.code, int) else 2
    command = {
        "run": run,
        "list-checks": list_checks,
        "list-candidates": list_candidates,
        "fuzz": fuzz_command.fuzz,
    }[args.command]
    try:
        return command(args)
    except (SpecError, FileNotFoundError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
