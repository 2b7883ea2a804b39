"""``kfac-conformance``: run the check catalogue against a candidate from the command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from kfac_conformance.api import NothingSelected, check_candidate
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.contract import conventions
from kfac_conformance.contract.loading import SpecError, candidate_availability
from kfac_conformance.execution.limits import DEFAULT_MAX_CONSECUTIVE_TIMEOUTS, RunLimits
from kfac_conformance.execution.options import DEFAULT_TIMEOUT_S, RunOptions
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.torchrun import NotUnderTorchrun, TorchrunProcess
from kfac_conformance.frontends import coverage_command, fuzz_command
from kfac_conformance.frontends.environment import (
    CANDIDATE_OPTION_HELP,
    NO_CANDIDATE,
    chosen_candidate,
)
from kfac_conformance.reports.report import Report, summary_text

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
    run.add_argument("--candidate", help=CANDIDATE_OPTION_HELP)
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
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per check, 0 for no limit (default {DEFAULT_TIMEOUT_S:g}); a check that "
        "runs longer becomes an error (its worker process is killed and replaced) and the run "
        "goes on",
    )
    run.add_argument(
        "--max-consecutive-timeouts",
        type=int,
        default=DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
        metavar="K",
        help="after K checks in a row time out, the remaining checks end as errors without "
        f"running (default {DEFAULT_MAX_CONSECUTIVE_TIMEOUTS}; 0 never stops)",
    )
    run.add_argument(
        "--maxfail",
        type=int,
        metavar="N",
        help="stop after N failed or errored checks, as pytest's --maxfail; the remaining "
        "checks end as errors without running",
    )
    run.add_argument(
        "--max-time",
        type=float,
        metavar="S",
        help="seconds for the whole run; a check still running then times out, and the "
        "remaining checks end as errors without running",
    )
    run.add_argument(
        "--isolate",
        action="store_true",
        help="run every check in its own forked child process instead of one reused worker "
        "process (several times slower: the children cannot share caches); CPU only",
    )
    run.add_argument(
        "--no-supervise",
        action="store_true",
        help="UNSAFE, for debugging (pdb, prints): run the checks in this process instead of a "
        "supervised worker process; a candidate that crashes or calls os._exit then ends the "
        "run, and a hang can only be abandoned in a thread",
    )
    run.add_argument(
        "--launcher",
        choices=["fork", "torchrun"],
        default="fork",
        help="how the distributed checks start their process groups: 'fork' (default) forks "
        "every rank; 'torchrun' runs in each process that torchrun started, each forking its "
        "own rank; rank 0 writes the report and prints the summary (docs/distributed.md); "
        "only with --profile distributed",
    )
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the problems are tiny, and more threads only "
        "add synchronisation; see docs/performance.md)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output; one line per failure"
    )
    _add_output_options(run, html_option="--report-html")
    run.set_defaults(follower=False)  # a torchrun process other than rank 0: silent
    report = commands.add_parser(
        "report",
        help="turn a JSON report into HTML, JUnit XML or GitHub annotations; without any of "
        "them, print its text summary",
    )
    report.add_argument("json", metavar="REPORT.json", help="a report written by --report-json")
    _add_output_options(report, html_option="--html")
    listing = commands.add_parser("list-checks", help="list the checks and the cases they run on")
    listing.add_argument("--profile", choices=sorted(PROFILES), default="default")
    listing.add_argument(
        "--verbose", "-v", action="store_true", help="also list every check[case] item"
    )
    commands.add_parser(
        "list-candidates", help="list the registered candidates and whether each can run"
    )
    fuzz_command.add_parser(commands)
    coverage_command.add_parser(commands)
    return parser


def _add_output_options(parser: argparse.ArgumentParser, html_option: str) -> None:
    parser.add_argument(
        html_option,
        dest="html",
        metavar="PATH",
        help="write a self-contained HTML report here (heatmaps need the 'report' extra)",
    )
    parser.add_argument("--junit-xml", metavar="PATH", help="write a JUnit XML report here")
    parser.add_argument(
        "--format",
        choices=["text", "github"],
        default="github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text",
        help="'github' also prints one ::error annotation per failing item (the default "
        "when GITHUB_ACTIONS=true)",
    )


def _write_outputs(args: argparse.Namespace, report: dict) -> None:
    """The HTML report, the JUnit XML and the GitHub annotations the options ask for."""
    from kfac_conformance.reports import ci as ci_output
    from kfac_conformance.reports import html as html_report

    if args.html:
        html_report.write(report, args.html)
    if args.junit_xml:
        path = Path(args.junit_xml)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ci_output.junit_xml(report), encoding="utf-8")
    if args.format == "github":
        for line in ci_output.github_annotations(report):
            print(line)


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
    if args.launcher == "torchrun":
        _check_torchrun_usage(args)
    if args.timeout < 0:
        raise UsageError(f"--timeout must be positive, or 0 for no limit; got {args.timeout:g}")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if args.isolate and args.no_supervise:
        raise UsageError("--isolate and --no-supervise exclude each other: choose one")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but CUDA is not available")
        if args.isolate:
            raise UsageError(
                "--isolate cannot be combined with --device cuda: it forks, and CUDA does not "
                "survive fork; use --timeout for hangs instead"
            )


def _check_torchrun_usage(args: argparse.Namespace) -> None:
    """Under ``--launcher torchrun`` every process runs the plan; all but rank 0 stay silent."""
    if args.profile != "distributed":
        raise UsageError(
            "--launcher torchrun starts only the distributed checks' process groups: give "
            f"--profile distributed (got --profile {args.profile}); the other checks would run "
            "once per process"
        )
    try:
        process = TorchrunProcess.from_environment()
    except NotUnderTorchrun as error:
        raise UsageError(str(error)) from None
    if process.rank != 0:
        args.report_json = args.html = args.junit_xml = None
        args.quiet, args.format, args.follower = True, "text", True


def _options(args: argparse.Namespace, progress: _Progress) -> RunOptions:
    try:
        limits = RunLimits(args.max_consecutive_timeouts, args.maxfail, args.max_time)
        return RunOptions(
            profile=args.profile,
            device=args.device,
            mode="child" if args.isolate else "thread" if args.no_supervise else "supervised",
            timeout_s=args.timeout or None,
            limits=limits,
            threads=args.threads,
            launcher=args.launcher,
            progress=progress,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


class _Progress:
    """The run's progress callback: keeps the report, rewrites its JSON file (from the start:
    a run that dies still leaves it) and prints one character per result."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.report_json, self.quiet = args.report_json, args.quiet
        self.report: Report | None = None

    def __call__(self, report: Report) -> None:
        self.report = report
        if self.report_json:
            report.write(self.report_json)
        if report.results and not self.quiet:
            index = len(report.results)
            end = "\n" if index % 60 == 0 or index == len(report.planned) else ""
            print(_PROGRESS[report.results[-1].status], end=end, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    _check_usage(args)
    progress = _Progress(args)
    options = _options(args, progress)
    torch.set_num_threads(args.threads)
    exit_code = None
    try:
        with _terminate_as_interrupt():
            report = check_candidate(
                args.candidate,
                profile=args.profile,
                select=args.select,
                cases=args.case,
                xfail=args.xfail,
                options=options,
            )
    except NothingSelected:
        raise UsageError(f"no check matches --select {args.select}") from None
    except KeyboardInterrupt as interrupt:
        report = progress.report
        if report is None:  # stopped while loading and planning: there is no report yet
            raise
        exit_code = 128 + getattr(interrupt, "signal_number", signal.SIGINT)
        if not args.follower:
            print(
                f"\ninterrupted by {report.interruption}: the report is marked incomplete",
                file=sys.stderr,
            )
    if args.report_json:
        report.write(args.report_json)
    if not args.follower:
        print(summary_text(report, quiet=args.quiet))
    _write_outputs(args, report.to_json())
    if exit_code is not None:
        return exit_code
    # a follower's verdicts are rank 0's to give: its 1 would make torchrun stop rank 0
    return 0 if report.succeeded or args.follower else 1


def convert_report(args: argparse.Namespace) -> int:
    """A JSON report of an earlier run as HTML, JUnit XML or GitHub annotations; as the text
    summary a run prints when none of them is asked for."""
    from kfac_conformance.reports.html import ReportFormatError, load

    try:
        data = load(args.json)
    except ReportFormatError as error:
        raise UsageError(str(error)) from None
    if not (args.html or args.junit_xml or args.format == "github"):
        print(summary_text(Report.from_json(data)))
    _write_outputs(args, data)
    return 0


def list_checks(args: argparse.Namespace) -> int:
    items = plan(args.profile, case_entries(args.profile))
    if args.verbose:
        print(conventions.statement() + "\n")
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
    """Each registered candidate and whether it can run: its library's installed version,
    "built in", or "not installed" with the command that installs it."""
    for name, status in candidate_availability().items():
        print(f"{name:<20} {status}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 no check failed or errored, 1 one did, 2 usage error, 128 + N signal N
    (130 for Ctrl-C)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:  # argparse's own usage errors (2) and --help (0)
        return exit.code if isinstance(exit.code, int) else 2
    command = {
        "run": run,
        "report": convert_report,
        "list-checks": list_checks,
        "list-candidates": list_candidates,
        "fuzz": fuzz_command.fuzz,
        "coverage": coverage_command.coverage,
    }[args.command]
    try:
        if args.command in ("run", "fuzz"):
            args.candidate = chosen_candidate(args.candidate)
            if args.candidate is None:
                raise UsageError(NO_CANDIDATE)
        return command(args)
    except (SpecError, FileNotFoundError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def console_main() -> None:
    """The ``kfac-conformance`` command: :func:`main`, then an immediate exit with its code.

    The report and the summary are written and flushed by then. Exiting with ``os._exit``
    skips the interpreter's teardown, in which threads a candidate left running (possible
    with ``--no-supervise``) can abort the process (exit 134) and so replace the exit code.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader went away: nothing more can be said
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
