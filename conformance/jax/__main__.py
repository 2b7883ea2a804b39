"""``python -m kfac_conformance.jax``: the checks of stored cases against a JAX candidate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kfac_conformance.contract.expected_failures import read_expected_failures
from kfac_conformance.jax import runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="kfac-jax", help="a name or 'module:Class'")
    parser.add_argument("--report-json", type=Path, help="write the JSON report here")
    parser.add_argument("--xfail", type=Path, help="expected-failures file")
    parser.add_argument("--case", action="append", help="only these case ids (repeatable)")
    parser.add_argument("--check", action="append", help="only these check ids (repeatable)")
    parser.add_argument("--item", action="append", help="only these item ids (repeatable)")
    args = parser.parse_args(argv)
    items = runner.plan(args.case, args.check)
    if args.item:
        items = [item for item in items if item.id in args.item]
    if not items:
        parser.error("no item matches the selection")
    expected = read_expected_failures(args.xfail) if args.xfail else []

    def show(result: dict) -> None:
        line = f"{result['status'].upper():8} {result['check_id']}[{result['case_id']}]"
        if result["status"] != "passed":
            line += f": {result['message']}"
        if result["diagnosis"]:
            line += f"\n         diagnosis: {result['diagnosis']}"
        print(line, flush=True)

    document = runner.run(args.candidate, items, expected, args.report_json, show)
    summary = document["summary"]
    print(
        f"{document['candidate']['name']}: {summary['ran']} of {summary['total']} checks: "
        f"{summary['passed']} passed, {summary['failed']} failed, {summary['error']} errors, "
        f"{summary['skipped']} skipped, {summary['xfailed']} xfailed, {summary['xpassed']} xpassed"
    )
    for pattern in document["unused_expected_failures"]:
        print(f"warning: expected failure {pattern!r} matched no check")
    return 0 if summary["failed"] == 0 and summary["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
