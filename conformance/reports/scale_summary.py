"""The run's scale summary: constant factors judged across the run, not per item.

A candidate that scales its blocks differently from the tutorial fails many items by a
constant factor. Whether a declarable convention explains that is a question about the whole
run: one problem's counts name a factor by coincidence, and a convention that fixes one
failure can break an item that passes. From each result's scale record
(:mod:`kfac_conformance.comparison.scale_records`) this module

- tabulates every factor of a *scale-only* failure (every compared layer a constant multiple
  of its target) against the counts of its problem: fisher type, loss, reduction, layer
  type, ``N`` data, ``T`` loss terms per datum, ``S`` shared positions, ``R``, ``K`` batches;
- suggests a declaration only if it is predicted to make every scale-only failure pass and
  to keep every passing item passing. The prediction is exact arithmetic on the records,
  since ``Session.call`` divides every answer by the declared convention's factor: under
  another declaration an answer is rescaled by ``ρ``, the ratio of the two conventions'
  factors on its problem. A failed layer with factor ``f`` and residual ``r`` then has the
  relative error ``√((f/ρ − 1)² + (r f/ρ)²)`` (the residual is orthogonal to the target).
  A passing item whose check compares answers with exact or reference blocks
  (``verdict_scale`` "absolute") keeps passing when ``ρ = 1`` on each of its answers; one
  that compares answers with each other or tests scale-free properties ("relative") when
  ``ρ`` is the same on all of them. Items of checks a rescaling can pass or fail either way
  ("unknown") are left out and counted; a failed item is judged by its first failing
  comparison, the one its record describes; failures that are not scale-only are not judged.
- otherwise says that no declarable convention fits and what the factor depends on: one
  expression of the counts for all of them, or one per layer type, fisher type, loss,
  reduction or kind of target (:mod:`kfac_conformance.comparison.factor_names`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kfac_conformance.comparison import factor_names
from kfac_conformance.comparison.factor_names import Occurrence
from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import (
    CURVATURE_CONVENTIONS,
    EMPIRICAL_FISHER_CONVENTIONS,
    Conventions,
)
from kfac_conformance.execution.result import Result

FAILED, PASSED = ("failed", "xfailed"), ("passed", "xpassed")
# a convention's factor this close to 1 (or to another answer's) leaves an answer as it was
_SAME_SCALE = 1e-9
# categories a factor may vary with, in the order the summary tries them
_CATEGORIES: dict[str, Callable[[Occurrence], str]] = {
    "layer type": lambda o: str(o.counts["layer type"]),
    "fisher type": lambda o: str(o.counts["fisher type"]),
    "loss": lambda o: str(o.counts["loss"]),
    "reduction": lambda o: str(o.counts["reduction"]),
}
# what the failed answers were compared with; the factors against the candidate's own answers
# (invariance checks) are ratios between two problems' scales, so each kind is named apart
_TARGETS = ("exact or reference", "own answer")
_AGAINST = {
    "exact or reference": "against exact or reference blocks",
    "own answer": "against the candidate's own answers (invariance: a ratio of two scales)",
}
_FAILURE_CATEGORIES = {"fisher type": "fisher_type", "loss": "loss", "reduction": "reduction"}
_TABLE_ROWS_SHOWN = 24
_REGISTRIES = {"curvature": CURVATURE_CONVENTIONS, "empirical_fisher": EMPIRICAL_FISHER_CONVENTIONS}


@dataclass
class Row:
    """One line of the table: a factor and the counts it was found with, and on which items."""

    factor: float
    named: str
    fisher_type: str
    loss: str
    reduction: str
    layer_type: str
    N: int
    T: int
    S: int
    R: float
    K: int
    target: str
    items: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ScaleSummary:
    rows: list[Row]
    failures: int  # scale-only failures
    passing_judged: int
    left_out: int  # passing items of checks a rescaling may pass or fail either way
    fitting: list[Conventions]
    depends_on: list[str]

    def verdict(self) -> str:
        if not self.fitting:
            return "no declarable convention fits"
        return " or ".join(f"declare {c.declaration()}" for c in self.fitting)

    def to_json(self) -> dict:
        return {
            "scale_only_failures": self.failures,
            "passing_items_judged": self.passing_judged,
            "items_left_out": self.left_out,
            "table": [row.to_json() for row in self.rows],
            "fitting_conventions": [c.describe() for c in self.fitting],
            "verdict": self.verdict(),
            "depends_on": self.depends_on,
        }

    def text_lines(self) -> list[str]:
        lines = [
            f"SCALE: {self.failures} items fail by a constant factor only (every compared "
            "layer a multiple of its target); the factors against the counts of their problems:"
        ]
        lines += _table(self.rows)
        judged = f"judged on these failures and {self.passing_judged} passing items"
        if self.left_out:
            judged += (
                f"; left out: {self.left_out} passing items of checks that a rescaling can pass "
                "or fail"
            )
        if self.fitting:
            lines.append(
                f"Declaring {' or '.join(c.declaration() for c in self.fitting)} is predicted "
                f"to make every one of them pass and to keep every passing item passing ({judged})."
            )
            lines += [f"  {_formula(c)}" for c in self.fitting]
            if len(self.fitting) > 1:
                lines.append("  (they coincide on every problem of this run)")
        else:
            lines.append(
                "No declarable convention fits: each would leave one of these failing or fail "
                f"an item that passes ({judged})."
            )
        lines += [f"The factor {text}." for text in self.depends_on]
        return lines


def summarize(results: Sequence[Result], declared: Conventions) -> ScaleSummary | None:
    """The summary of ``results`` for a candidate that declared ``declared``; ``None`` when no
    item failed by a constant factor only."""
    failures = [r for r in results if r.status in FAILED and r.scale and r.scale.get("failure")]
    if not failures:
        return None
    passing = [
        r.scale for r in results if r.status in PASSED and r.scale and r.scale.get("answers")
    ]
    judged = [record for record in passing if record["verdict_scale"] != "unknown"]
    occurrences = [
        (result.item_id, occurrence)
        for result in failures
        for occurrence in _occurrences(result.scale["failure"])
    ]
    groups = {
        target: _groups([o for _, o in occurrences if o.counts["target"] == target])
        for target in _TARGETS
        if any(o.counts["target"] == target for _, o in occurrences)
    }
    fitting = _fitting(
        [r.scale["failure"] for r in failures], judged, declared, [r.scale for r in results]
    )
    return ScaleSummary(
        rows=_rows(occurrences, groups),
        failures=len(failures),
        passing_judged=len(judged),
        left_out=len(passing) - len(judged),
        fitting=fitting,
        depends_on=[
            f"{_AGAINST[target]} {text}" if len(groups) > 1 else text
            for target, named in groups.items()
            for text in _dependence(named)
        ],
    )


def _occurrences(failure: dict) -> list[Occurrence]:
    """The wrong layers of a failure, each with its factor and every count and category."""
    rtol = max(1e-6, 10 * failure["tolerance"])
    target = "own answer" if failure.get("against") else "exact or reference"
    found = []
    for layer in failure["layers"]:
        if math.hypot(layer["factor"] - 1, layer["factor"] * layer["residual"]) <= rtol:
            continue  # a right layer: nothing to name
        counts = {name: failure[name] for name in ("N", "T", "R", "K")}
        counts |= {"S": layer["S"], "layer type": layer["type"], "target": target}
        counts |= {name: failure[key] for name, key in _FAILURE_CATEGORIES.items()}
        found.append(Occurrence(layer["factor"], counts, rtol))
    return found


def _groups(occurrences: list[Occurrence]) -> dict[str, dict[str, list[str]]]:
    """How the factors are named: ``{"": {"": names}}`` when one expression names them all,
    else ``{category: {value: names}}`` for each category whose every value is named."""
    overall = factor_names.names(occurrences)
    if overall:
        return {"": {"": overall}}
    found = {}
    for category, value_of in _CATEGORIES.items():
        parts: dict[str, list[Occurrence]] = {}
        for occurrence in occurrences:
            parts.setdefault(value_of(occurrence), []).append(occurrence)
        if len(parts) < 2:
            continue
        named = {value: factor_names.names(part) for value, part in parts.items()}
        if all(named.values()):
            found[category] = named
    return found


Groups = dict[str, dict[str, dict[str, list[str]]]]  # target -> _groups


def _name_of(occurrence: Occurrence, groups: Groups) -> str:
    """The occurrence's name: that of the first partition (by category) that names them all."""
    partitions = groups[occurrence.counts["target"]]
    if not partitions:
        return ""
    category, named = next(iter(partitions.items()))
    return factor_names.describe(named[_CATEGORIES[category](occurrence) if category else ""])


def _dependence(groups: dict[str, dict[str, list[str]]]) -> list[str]:
    if "" in groups:
        named = groups[""][""]
        used = factor_names.counts_used(named)
        varies = f"varies with {' and '.join(used)}" if used else "does not vary with the counts"
        return [f"is {factor_names.describe(named)} on every scale-only failure: it {varies}"]
    if not groups:
        return [
            "is no one expression of the counts, nor one per layer type, fisher type, loss "
            "or reduction: see the table"
        ]
    return [
        f"varies with {category}: "
        + ", ".join(f"{value} x {factor_names.describe(named)}" for value, named in parts.items())
        for category, parts in groups.items()
    ]


def _rows(occurrences: list[tuple[str, Occurrence]], groups: Groups) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for item_id, o in occurrences:
        c = o.counts
        row = Row(
            float(f"{o.factor:.6g}"),
            _name_of(o, groups),
            c["fisher type"],
            c["loss"],
            c["reduction"],
            c["layer type"],
            int(c["N"]),
            int(c["T"]),
            int(c["S"]),
            float(f"{float(c['R']):.6g}"),
            int(c["K"]),
            c["target"],
        )
        key = tuple(v for k, v in row.__dict__.items() if k != "items")
        rows.setdefault(key, row)
        if item_id not in rows[key].items:
            rows[key].items.append(item_id)
    # the factors against exact or reference blocks first: they are the candidate's scale
    return sorted(rows.values(), key=lambda row: _TARGETS.index(row.target))


def _ratio(combination: Conventions, declared: Conventions, answer: dict, fisher_type: str):
    """``ρ``: how declaring ``combination`` instead of ``declared`` rescales ``answer``."""
    new = conventions.scale(combination, fisher_type, answer)
    return new / conventions.scale(declared, fisher_type, answer)


def _fixes(combination: Conventions, declared: Conventions, failure: dict) -> bool:
    ratio = _ratio(combination, declared, failure, failure["fisher_type"])
    if failure.get("against"):
        ratio /= _ratio(combination, declared, failure["against"], failure["fisher_type"])
    for layer in failure["layers"]:
        factor = layer["factor"] / ratio
        if not math.hypot(factor - 1, factor * layer["residual"]) <= failure["tolerance"]:
            return False
    return True


def _keeps(combination: Conventions, declared: Conventions, record: dict) -> bool:
    ratios = [_ratio(combination, declared, a, a["fisher_type"]) for a in record["answers"]]
    reference = 1.0 if record["verdict_scale"] == "absolute" else ratios[0]
    return all(abs(ratio / reference - 1) <= _SAME_SCALE for ratio in ratios)


def _fitting(failures, passing, declared: Conventions, records) -> list[Conventions]:
    """The declarations that fix every failure and keep every judged passing item, changing
    only fields that govern an answer of the run, and as few of them as possible."""
    governed = {
        conventions.governing_field(answer["fisher_type"])
        for record in records
        if record
        for answer in [*record["answers"], *([record["failure"]] if record["failure"] else [])]
    }
    choices = [
        list(registry) if name in governed else [getattr(declared, name)]
        for name, registry in _REGISTRIES.items()
    ]
    fitting = []
    for curvature, empirical_fisher in itertools.product(*choices):
        combination = Conventions(curvature=curvature, empirical_fisher=empirical_fisher)
        if combination == declared:
            continue
        if all(_fixes(combination, declared, f) for f in failures) and all(
            _keeps(combination, declared, record) for record in passing
        ):
            fitting.append(combination)
    if not fitting:
        return []
    changes = {c: sum(getattr(c, f) != getattr(declared, f) for f in _REGISTRIES) for c in fitting}
    fewest = min(changes.values())
    return [c for c in fitting if changes[c] == fewest]


def _formula(combination: Conventions) -> str:
    return "; ".join(
        f"{field}={name!r}: {_REGISTRIES[field][name].formula}"
        for field, name in combination.describe().items()
        if name != "tutorial"
    )


_COLUMNS = ("factor", "named", "fisher", "loss", "reduction", "layer", "N", "T", "S", "R", "K")


def _table(rows: list[Row]) -> list[str]:
    cells = [
        [
            f"{r.factor:g}",
            r.named or "-",
            r.fisher_type,
            r.loss,
            r.reduction,
            r.layer_type,
            str(r.N),
            str(r.T),
            str(r.S),
            f"{r.R:.4g}",
            str(r.K),
            ("vs own answer: " if r.target == "own answer" else "")
            + r.items[0]
            + (f" (+{len(r.items) - 1})" if len(r.items) > 1 else ""),
        ]
        for r in rows[:_TABLE_ROWS_SHOWN]
    ]
    header = [*_COLUMNS, "items"]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(_COLUMNS))]
    lines = [
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in [header, *cells]
    ]
    if len(rows) > _TABLE_ROWS_SHOWN:
        lines.append(f"  ... and {len(rows) - _TABLE_ROWS_SHOWN} more rows (see the JSON report)")
    return lines
