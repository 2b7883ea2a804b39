"""The coverage map as text, JSON or markdown (``kfac-conformance coverage --format``)."""

from __future__ import annotations

from kfac_conformance.checks.base import KINDS
from kfac_conformance.coverage import space
from kfac_conformance.coverage.recording import Cell, CoverageMap
from kfac_conformance.reports.report import describe_capabilities

_APPROXIMATION_NAMES = {"kfac": "KFAC", "ekfac": "EKFAC"}
REQUIREMENT_TEXT = (
    "every cell (a Fisher type and approximation, crossed with one other claimed value) needs "
    "a value check (kind exact or reference; for MC also statistical: one MC answer has no "
    "deterministic target, its mean has) and an invariance check"
)


def pair_title(pair: space.Pair) -> str:
    fisher_type, approximation = pair
    return f"{fisher_type} / {_APPROXIMATION_NAMES.get(approximation, approximation)}"


def _by_kind(coverage: CoverageMap, cell: Cell) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {kind: [] for kind in KINDS}
    for check, items in coverage.checks(cell).items():
        found[coverage.kinds[check]].append((check, items))
    return found


def _exclusions(cell: Cell) -> dict[str, space.Exclusion]:
    pair, dimension, value = cell
    found = {r: space.exclusion_for(pair, dimension, value, r) for r in space.REQUIREMENTS}
    return {requirement: e for requirement, e in found.items() if e is not None}


def _cells(coverage: CoverageMap) -> list[tuple[space.Pair, space.Exclusion | None, list[Cell]]]:
    values = space.claimed_values(coverage.claim)
    return [
        (pair, space.excluded_pair(pair), [(pair, d, v) for d, v in values])
        for pair in space.claimed_pairs(coverage.claim)
    ]


def _heading(coverage: CoverageMap) -> str:
    return (
        f"Coverage of {coverage.candidate}'s claim under the {coverage.profile!r} profile: "
        f"{len(coverage.kinds)} checks"
    )


def as_text(coverage: CoverageMap) -> str:
    lines = [_heading(coverage), f"Requirement: {REQUIREMENT_TEXT}.", ""]
    for pair, excluded, cells in _cells(coverage):
        if excluded is not None:
            lines += [f"== {pair_title(pair)}: excluded: {excluded.reason}", ""]
            continue
        lines.append(f"== {pair_title(pair)}")
        for cell in cells:
            _, dimension, value = cell
            lines.append(f"  {dimension} = {value}")
            for kind, checks in _by_kind(coverage, cell).items():
                if checks:
                    listed = ", ".join(f"{check} ×{items}" for check, items in checks)
                    lines.append(f"      {kind}: {listed}")
            for requirement, exclusion in _exclusions(cell).items():
                lines.append(f"      ({requirement} not required: {exclusion.reason})")
            for requirement in coverage.missing(cell):
                lines.append(f"      MISSING: no {requirement} check")
        lines.append("")
    lines += _summary(coverage)
    return "\n".join(lines)


def _summary(coverage: CoverageMap, bullet: str = "  ") -> list[str]:
    holes = coverage.holes()
    lines = [f"{len(holes)} empty cells" + (":" if holes else ".")]
    lines += [f"{bullet}{hole.describe()}" for hole in holes]
    if coverage.not_passed:
        lines.append(
            f"{len(coverage.not_passed)} items did not pass against the recording reference "
            "(their calls still count):"
        )
        lines += [f"{bullet}{item}" for item in coverage.not_passed]
    return lines


def as_json(coverage: CoverageMap) -> dict:
    pairs = []
    for pair, excluded, cells in _cells(coverage):
        entry = {
            "fisher_type": pair[0],
            "approximation": pair[1],
            "excluded": excluded.reason if excluded else None,
            "cells": [],
        }
        for cell in [] if excluded else cells:
            entry["cells"].append(
                {
                    "dimension": cell[1],
                    "value": cell[2],
                    "checks": [
                        {"id": check, "kind": coverage.kinds[check], "items": items}
                        for check, items in coverage.checks(cell).items()
                    ],
                    "not_required": {r: e.reason for r, e in _exclusions(cell).items()},
                    "missing": coverage.missing(cell),
                }
            )
        pairs.append(entry)
    return {
        "candidate": coverage.candidate,
        "profile": coverage.profile,
        "claim": describe_capabilities(coverage.claim),
        "requirement": REQUIREMENT_TEXT,
        "pairs": pairs,
        "holes": [hole.describe() for hole in coverage.holes()],
        "not_passed": coverage.not_passed,
    }


def _markdown_cell(checks: list[tuple[str, int]]) -> str:
    return "<br>".join(f"`{check}` ×{items}" for check, items in checks)


def as_markdown(coverage: CoverageMap) -> str:
    exclusions = list(space.EXCLUSIONS)
    lines = [
        f"# {_heading(coverage)}",
        "",
        f"Requirement: {REQUIREMENT_TEXT}. A cell lists every check that asks the candidate "
        "for it, with its number of items; how calls are attributed is in "
        "`conformance/coverage/recording.py`.",
        "",
        "Not required, by definition (`conformance/coverage/space.py`):",
        "",
        *(f"{number}. {e.reason}." for number, e in enumerate(exclusions, 1)),
        "",
    ]
    for pair, excluded, cells in _cells(coverage):
        lines.append(f"## {pair_title(pair)}")
        lines.append("")
        if excluded is not None:
            lines += [f"Excluded ({exclusions.index(excluded) + 1}).", ""]
            continue
        lines.append("| dimension | value | " + " | ".join(KINDS) + " | missing |")
        lines.append("|" + " --- |" * (len(KINDS) + 3))
        for cell in cells:
            by_kind = _by_kind(coverage, cell)
            waived = [
                f"{r}: not required ({exclusions.index(e) + 1})"
                for r, e in _exclusions(cell).items()
            ]
            missing = [f"**{requirement}**" for requirement in coverage.missing(cell)]
            row = [cell[1], cell[2], *(_markdown_cell(by_kind[kind]) for kind in KINDS)]
            lines.append("| " + " | ".join([*row, "<br>".join(missing + waived)]) + " |")
        lines.append("")
    lines += _summary(coverage, bullet="- ")
    return "\n".join(lines) + "\n"


FORMATS = {"text": as_text, "markdown": as_markdown}
