"""Naming constant factors through the counts of their problems, across every occurrence.

One problem's counts name a factor by coincidence as often as not: on a case with two batches
and ``R = 2`` a factor 4 is ``K²`` as much as ``R²``. So a factor is named only by an
expression of the counts that gives it on *every* occurrence of the pattern being named (the
run's scale summary passes each pattern's occurrences together), and when the occurrences
cannot tell several simplest expressions apart, all of them are given.

Expressions are ``c · Π q^e`` over the counts ``N``, ``T``, ``S``, ``R``, ``K`` (see
:data:`~kfac_conformance.comparison.tolerances.QUANTITY_NAMES`) with exponents from -2 to 2,
at most three factors of counts in all, and ``c`` one of 1, 2, 4, 1/2, 1/4; a factor that is
the same on several occurrences is also named as that constant. Simpler expressions win:
fewer factors of counts, then no constant. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

COUNTS = ("N", "T", "S", "R", "K")
_CONSTANTS = (1.0, 2.0, 4.0, 0.5, 0.25)
_MAX_DEGREE = 3
# a constant that is none of _CONSTANTS counts as much as two factors of counts
_BARE_CONSTANT_COMPLEXITY = 2
_SHOWN_TIES = 4


@dataclass(frozen=True)
class Occurrence:
    """One constant factor and the counts of the problem (and layer) it was found on;
    ``rtol`` is how closely an expression must give it."""

    factor: float
    counts: Mapping[str, float]
    rtol: float = 1e-6


@dataclass(frozen=True)
class Expression:
    constant: float
    exponents: tuple[int, ...]  # over COUNTS

    @property
    def complexity(self) -> int:
        return sum(abs(e) for e in self.exponents) + (self.constant != 1.0)

    @property
    def counts(self) -> list[str]:
        return [name for name, e in zip(COUNTS, self.exponents, strict=True) if e]

    def value(self, counts: Mapping[str, float]) -> float:
        value = self.constant
        for name, exponent in zip(COUNTS, self.exponents, strict=True):
            if exponent:
                value *= float(counts.get(name, 1.0)) ** exponent
        return value

    def __str__(self) -> str:
        def power(name: str, exponent: int) -> str:
            return name if abs(exponent) == 1 else f"{name}^{abs(exponent)}"

        above = [power(n, e) for n, e in zip(COUNTS, self.exponents, strict=True) if e > 0]
        below = [power(n, e) for n, e in zip(COUNTS, self.exponents, strict=True) if e < 0]
        if self.constant > 1:
            above.insert(0, f"{self.constant:g}")
        elif self.constant < 1:
            below.insert(0, f"{1 / self.constant:g}")
        text = "·".join(above) or "1"
        if below:
            text += f"/{below[0]}" if len(below) == 1 else f"/({'·'.join(below)})"
        return text


def _expressions() -> list[Expression]:
    found = [
        Expression(constant, exponents)
        for exponents in itertools.product(range(-2, 3), repeat=len(COUNTS))
        if 0 < sum(abs(e) for e in exponents) <= _MAX_DEGREE
        for constant in _CONSTANTS
    ]
    found += [Expression(constant, (0,) * len(COUNTS)) for constant in _CONSTANTS[1:]]
    return sorted(found, key=lambda e: (e.complexity, e.constant != 1.0))


_ALL = _expressions()


def _matches(target: float, value: float, rtol: float) -> bool:
    return abs(value - target) <= rtol * abs(target)


def names(occurrences: Sequence[Occurrence]) -> list[str]:
    """The simplest expressions that give the factor of every occurrence (several when the
    occurrences cannot tell them apart); ``[]`` when none does."""
    if not occurrences:
        return []
    first = occurrences[0]
    matching = [
        expression
        for expression in _ALL
        if all(_matches(o.factor, expression.value(o.counts), o.rtol) for o in occurrences)
    ]
    candidates = [(expression.complexity, str(expression)) for expression in matching]
    same = all(_matches(first.factor, o.factor, max(first.rtol, o.rtol)) for o in occurrences)
    problems = {tuple(sorted((k, str(v)) for k, v in o.counts.items())) for o in occurrences}
    if same and len(problems) > 1 and not any(e.counts == [] for e in matching):
        # a constant over several problems is a finding; on one problem it explains nothing
        candidates.append((_BARE_CONSTANT_COMPLEXITY, f"{first.factor:.6g}"))
    if not candidates:
        return []
    simplest = min(complexity for complexity, _ in candidates)
    return [text for complexity, text in candidates if complexity == simplest]


def describe(named: Sequence[str]) -> str:
    """``"N·R"``, or ``"N·R or 2/T"`` for ties (at most a few, then "...")."""
    shown = list(named[:_SHOWN_TIES])
    return " or ".join(shown) + (" or ..." if len(named) > _SHOWN_TIES else "")


def counts_used(named: Sequence[str]) -> list[str]:
    """The counts the named expressions use, in :data:`COUNTS` order."""
    return [name for name in COUNTS if any(name in text for text in named)]
