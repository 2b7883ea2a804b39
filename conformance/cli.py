"""``kfac-conformance``: run the check catalogue against a candidate from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from kfac_conformance.checks import ALL_CHECKS
from kfac_conformance.expected_failures import read_expected_failures
from kfac_conformance.loading import SpecError, load_candidate, registered_names
from kfac_conformance.report import Report, summary_text
from kfac_conformance.runner import Item, case_entries, custom_entries, plan, run_items
from kfac_conformance.session import PROFILES

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
    run.add_argument("--timeout", type=float, default=300.0, help="seconds per check (default 300)")
    run.add_argument("--isolate", action="store_true", help="run every check in a child process")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    listing = commands.add_parser("list-checks", help="list the checks and the cases they run on")
    listing.add_argument("--profile", choices=sorted(PROFILES), default="default")
    listing.add_argument(
        "--verbose", "-v", action="store_true", help="also list every check[case] item"
    )
    commands.add_parser("list-candidates", help="list the registered candidates")
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
        command += ["--select", item.id]
        try:
            problem = item.entry.make_problem().describe()
        except Exception as error:  # the description must never hide the result
            problem = {"error": f"could not describe the problem: {error}"}
        return {"command": shlex.join(command), "problem": problem}

    return reproduce


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda was given but CUDA is not available", file=sys.stderr)
            return 2
    candidate = load_candidate(args.candidate)
    expected = read_expected_failures(args.xfail) if args.xfail else []
    items = plan(args.profile, case_entries(args.profile, custom_entries(args.case)), args.select)
    if not items:
        print(f"error: no check matches --select {args.select}", file=sys.stderr)
        return 2
    report = Report(
        args.candidate,
        candidate.name,
        getattr(candidate, "version", None),
        args.profile,
        args.device,
        [item.id for item in items],
    )
    used: set[int] = set()
    if args.report_json:
        report.write(args.report_json)
    progress = not args.quiet
    try:
        for index, result in enumerate(
            run_items(
                candidate,
                items,
                args.profile,
                args.device,
                args.timeout,
                args.isolate,
                expected,
                _reproduction(args),
                used,
            ),
            1,
        ):
            report.results.append(result)
            if args.report_json:
                report.write(args.report_json)
            if progress:
                end = "\n" if index % 60 == 0 or index == len(items) else ""
                print(_PROGRESS[result.status], end=end, file=sys.stderr, flush=True)
        report.complete = True
    except KeyboardInterrupt:
        print("\ninterrupted: the report is marked incomplete", file=sys.stderr)
    report.unused_expected_failures = [e.pattern for e in expected if e.line not in used]
    if args.report_json:
        report.write(args.report_json)
    print(summary_text(report))
    if not report.complete:
        return 130
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
    args = _parser().parse_args(argv)
    command = {"run": run, "list-checks": list_checks, "list-candidates": list_candidates}[
        args.command
    ]
    try:
        return command(args)
    except (SpecError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
