"""``kfac-conformance fuzz``: the property-based search (:mod:`kfac_conformance.fuzzing.search`) from
the command line, with progress, a JSON report and a ``--case`` file for every distinct failure
it finds.

Exit codes: 0 nothing found, 1 a failure found, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
from pathlib import Path

import torch

from kfac_conformance.contract.expected_failures import read_expected_failures
from kfac_conformance.contract.loading import load_candidate
from kfac_conformance.frontends.environment import CANDIDATE_OPTION_HELP
from kfac_conformance.fuzzing.case_files import case_file_text, reproduction_command
from kfac_conformance.fuzzing.properties import PROPERTY_IDS, drawn_request
from kfac_conformance.fuzzing.search import (
    DEFAULT_DATABASE,
    SHRINK_ALLOWANCE,
    Failure,
    SearchOutcome,
    SearchState,
    search,
)

DEFAULT_MAX_EXAMPLES = 300
DEFAULT_TIME_BUDGET = 210.0
DEFAULT_CASES = ".kfac-conformance/fuzz-cases"


def add_parser(commands: argparse._SubParsersAction) -> None:
    fuzz = commands.add_parser(
        "fuzz",
        help="search drawn problems for a property the candidate breaks (hypothesis)",
        description=__doc__,
    )
    fuzz.add_argument("--candidate", help=CANDIDATE_OPTION_HELP)
    fuzz.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        help=f"examples that call the candidate, shrinking included: a hard cap (default "
        f"{DEFAULT_MAX_EXAMPLES})",
    )
    fuzz.add_argument("--seed", type=int, help="hypothesis seed (default: a random one, printed)")
    fuzz.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET,
        help=f"seconds for the whole search (default {DEFAULT_TIME_BUDGET:g}); the last "
        f"{SHRINK_ALLOWANCE:g} s (at most a quarter) are kept for shrinking",
    )
    fuzz.add_argument(
        "--max-failures", type=int, help="stop after this many failures (default: search on)"
    )
    fuzz.add_argument("--report-json", help="write the JSON report here")
    fuzz.add_argument(
        "--save-cases",
        default=DEFAULT_CASES,
        help=f"write a --case file for every failure into this folder (default {DEFAULT_CASES}, "
        "relative to the working directory)",
    )
    fuzz.add_argument(
        "--xfail", help="expected-failures file: property ids or globs, reason after '#'"
    )
    fuzz.add_argument(
        "--property",
        action="append",
        choices=sorted(PROPERTY_IDS),
        metavar="ID",
        help="search only this property, a check id (repeatable; default all: "
        + ", ".join(sorted(PROPERTY_IDS))
        + ")",
    )
    fuzz.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=f"hypothesis' example database; failures saved here are replayed first "
        f"(default {DEFAULT_DATABASE}, relative to the working directory)",
    )
    fuzz.add_argument("--no-database", action="store_true", help="neither replay nor save")
    fuzz.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _progress(quiet: bool):
    interactive = sys.stderr.isatty()
    failing = [0]

    def show(state: SearchState) -> None:
        if quiet:
            return
        found = state.found + len(state.failing)
        changed, failing[0] = found != failing[0], found
        left = max(0.0, state.time_budget - state.elapsed)
        line = (
            f"fuzz: {state.examples}/{state.max_examples} examples, {found} failures found"
            f"{' (shrinking)' if state.failing else ''}, {left:.0f} s of budget left"
        )
        if interactive:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif state.examples % 25 == 0 or changed:
            print(line, file=sys.stderr, flush=True)

    return show


def _usage(args: argparse.Namespace) -> None:
    from kfac_conformance.frontends.cli import UsageError

    if args.max_examples < 1:
        raise UsageError(f"--max-examples must be at least 1, got {args.max_examples}")
    if args.max_failures is not None and args.max_failures < 1:
        raise UsageError(f"--max-failures must be at least 1, got {args.max_failures}")
    if args.time_budget <= 0:
        raise UsageError(f"--time-budget must be positive, got {args.time_budget:g}")


def _save_cases(failures: list[Failure], spec: str, folder: Path) -> None:
    """One case file per failure, named after its property and case (numbered when two
    failures share both)."""
    folder.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for failure in failures:
        stem = failure.property.replace("/", "-") + f"-{failure.case.id}"
        name = next(
            f"{stem}{suffix}.py"
            for suffix in ("", *(f"-{n}" for n in range(2, len(failures) + 2)))
            if f"{stem}{suffix}.py" not in names
        )
        names.add(name)
        path = folder / name
        path.write_text(case_file_text(failure, spec, str(path)))
        failure.case_file = str(path)
        failure.reproduction = reproduction_command(
            spec, str(path), failure.property, failure.case.id
        )


def _report(args: argparse.Namespace, name: str, outcome: SearchOutcome) -> dict:
    return {
        "command": "fuzz",
        "candidate": args.candidate,
        "candidate_name": name,
        "torch": torch.__version__,
        "seed": outcome.seed,
        "max_examples": args.max_examples,
        "time_budget_s": args.time_budget,
        "examples": outcome.examples,
        "duration_s": round(outcome.seconds, 3),
        "out_of_time": outcome.out_of_time,
        "database": None if args.no_database else args.database,
        "properties": args.property or sorted(PROPERTY_IDS),
        "failures": [failure.to_json() for failure in outcome.failures],
    }


def _summary(outcome: SearchOutcome, spec: str) -> str:
    lines = [
        f"fuzz {spec}: {outcome.examples} examples in {outcome.seconds:.1f} s (seed "
        f"{outcome.seed}{', time budget spent' if outcome.out_of_time else ''}): "
        f"{len(outcome.failures) or 'no'} distinct failure{'' if len(outcome.failures) == 1 else 's'}"
    ]
    for failure in outcome.failures:
        result = failure.result
        examples, seconds = failure.found_after
        lines.append(
            f"\n{result.status.upper()} {failure.property} on {failure.case.id} (found after "
            f"{examples} examples, {seconds:.1f} s; shrunk at {failure.shrunk_after:.1f} s)"
        )
        lines.append(f"  distinct as: {failure.signature}")
        lines.append(f"  {result.message.strip().splitlines()[0] if result.message else ''}")
        if result.diagnosis:
            lines.append(f"  diagnosis: {result.diagnosis}")
        lines.append(f"  drawn: {drawn_request(failure.request)}")
        lines.append(f"  problem: {failure.case!r}")
        if failure.case_file:
            lines.append(f"  case file: {failure.case_file}")
        if failure.reproduction:
            lines.append(f"  reproduce: {failure.reproduction}")
    return "\n".join(lines)


def fuzz(args: argparse.Namespace) -> int:
    _usage(args)
    torch.set_num_threads(1)
    candidate = load_candidate(args.candidate)
    expected = read_expected_failures(args.xfail) if args.xfail else []
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    outcome = search(
        candidate,
        max_examples=args.max_examples,
        seed=seed,
        time_budget=args.time_budget,
        database=None if args.no_database else args.database,
        expected=expected,
        properties=args.property,
        progress=_progress(args.quiet),
        max_failures=args.max_failures,
    )
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    _save_cases(outcome.failures, shlex.quote(args.candidate), Path(args.save_cases))
    if args.report_json:
        report = _report(args, candidate.name, outcome)
        Path(args.report_json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(_summary(outcome, args.candidate))
    return 1 if outcome.failures else 0
