"""``kfac-conformance coverage``: for each value a candidate claims and each Fisher type and
approximation, which checks exercise it, with how many items and of which kind
(:mod:`kfac_conformance.coverage`), and the cells no check reaches.

The profile's plan runs against the reference behind the candidate's claim (the candidate
itself is only loaded, never called). Exit codes: 0 map written, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kfac_conformance.contract.loading import SpecError, load_candidate
from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.coverage.recording import measure_coverage
from kfac_conformance.coverage.render import FORMATS, as_json
from kfac_conformance.execution.profiles import PROFILES


def add_parser(commands: argparse._SubParsersAction) -> None:
    coverage = commands.add_parser(
        "coverage",
        help="which checks exercise each claimed value, per Fisher type and approximation",
        description=__doc__,
    )
    coverage.add_argument(
        "--candidate",
        default="kfac_ref",
        help="whose claim to map: registered name, module:attr or file.py:attr",
    )
    coverage.add_argument("--profile", choices=sorted(PROFILES), default="default")
    coverage.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    coverage.add_argument("--output", help="write the map here instead of to stdout")


def _claim(spec: str) -> tuple[Capabilities, bool]:
    """The candidate's claim, and whether it exposes the MC labels it draws."""
    try:
        candidate = load_candidate(spec)
    except SpecError:
        raise
    except Exception as error:  # the candidate's own module or constructor failed
        raise SpecError(
            f"candidate {spec!r} could not be loaded: {type(error).__name__}: {error}"
        ) from error
    claim = candidate.capabilities
    if not isinstance(claim, Capabilities):
        raise SpecError(
            f"candidate {spec!r}: capabilities must be a Capabilities, got {type(claim).__name__}"
        )
    if not (claim.fisher_types and claim.approximations):
        raise SpecError(
            f"candidate {spec!r} claims no Fisher type or no approximation: there is nothing to map"
        )
    return claim, callable(getattr(candidate, "sampled_labels", None))


def coverage(args: argparse.Namespace) -> int:
    claim, exposes_labels = _claim(args.candidate)
    mapped = measure_coverage(claim, args.profile, args.candidate, exposes_labels)
    if args.format == "json":
        text = json.dumps(as_json(mapped), indent=2) + "\n"
    else:
        text = FORMATS[args.format](mapped)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
