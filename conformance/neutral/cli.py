"""The command line of a framework's runner: ``python -m kfac_conformance.<framework>``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from kfac_conformance.contract.expected_failures import read_expected_failures
from kfac_conformance.neutral import runner
from kfac_conformance.neutral.plan import plan


def _show(result: dict) -> None:
    line = f"{result['status'].upper():8} {result['check_id']}[{result['case_id']}]"
    if result["status"] != "passed":
        line += f": {result['message']}"
    if result["diagnosis"]:
        line += f"\n         diagnosis: {result['diagnosis']}"
    print(line, flush=True)


def main(
    argv: list[str] | None,
    module: str,
    registry: Mapping[str, str],
    default: str,
    distributed: bool = False,
) -> int:
    """Run the stored-case items against a candidate of ``registry`` (or ``module:Class``);
    exit status 0 when nothing failed or errored. ``module`` is the runner's module, for the
    reproduction commands; ``distributed``: its candidates compute across devices, so the
    ``distributed/*`` items are planned."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description="The checks of stored cases against a candidate."
    )
    parser.add_argument("--candidate", default=default, help="a name or 'module:Class'")
    parser.add_argument("--report-json", type=Path, help="write the JSON report here")
    parser.add_argument("--xfail", type=Path, help="expected-failures file")
    parser.add_argument("--case", action="append", help="only these case ids (repeatable)")
    parser.add_argument("--check", action="append", help="only these check ids (repeatable)")
    parser.add_argument("--item", action="append", help="only these item ids (repeatable)")
    args = parser.parse_args(argv)
    items = plan(args.case, args.check, distributed)
    if args.item:
        items = [item for item in items if item.id in args.item]
    if not items:
        parser.error("no item matches the selection")
    expected = read_expected_failures(args.xfail) if args.xfail else []
    candidate = runner.load_candidate(args.candidate, registry)
    document = runner.run(
        args.candidate,
        candidate,
        items,
        f"python -m {module}",
        expected,
        args.report_json,
        _show,
    )
    summary = document["summary"]
    print(
        f"{document['candidate']['name']}: {summary['ran']} of {summary['total']} checks: "
        f"{summary['passed']} passed, {summary['failed']} failed, {summary['error']} errors, "
        f"{summary['skipped']} skipped, {summary['xfailed']} xfailed, {summary['xpassed']} xpassed"
    )
    for pattern in document["unused_expected_failures"]:
        print(f"warning: expected failure {pattern!r} matched no check")
    return 0 if summary["failed"] == 0 and summary["error"] == 0 else 1
