r"""Significance of the statistical checks: Student t p-values and Holm's correction.

A statistical item tests several hypotheses at once (every layer's block, each flavour, two
tests per block), and fails when Holm's step-down procedure rejects at least one of them at the
family-wise level :data:`FAMILY_ALPHA`. The item fails exactly when its smallest p-value is at
most ``FAMILY_ALPHA / m`` for ``m`` tests (Holm's first step is Bonferroni's), so under the
tests' distributional assumptions the chance that a correct candidate fails an item is at most
``FAMILY_ALPHA``, however many layers it has; Holm's later steps only name more of the wrong
blocks. The measured rates are in docs/statistics.md.

Plain Python (no torch): the neutral runner (:mod:`kfac_conformance.neutral.statistics`) applies the same
correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The nominal chance that a correct candidate fails one statistical item. Tiny on purpose: the
# t statistics of a few dozen seeds are only nearly Student-t distributed (the estimates are
# skewed sums of squares), and the margin keeps the measured rate far below what is stated.
FAMILY_ALPHA = 1e-6


def t_two_sided_p(t: float, df: int) -> float:
    r""":math:`P(|T_\nu| \ge |t|)` for Student's t with ``df`` degrees of freedom.

    Exact closed form for integer :math:`\nu` (Abramowitz and Stegun 26.7.3 and 26.7.4): with
    :math:`\theta = \arctan(|t|/\sqrt\nu)`, :math:`P(|T| < |t|)` is a finite series in
    :math:`\cos\theta`. The absolute error is round-off, about ``1e-15``.
    """
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if math.isnan(t):
        raise ValueError("the t statistic is nan")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            series += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term, series = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            series += term
        inside = math.sin(theta) * series
    return min(1.0, max(0.0, 1.0 - inside))


@dataclass(frozen=True)
class Test:
    """One t test of an item: what it is about (``block``, e.g. a layer and flavour), the
    test's name, its statistic, degrees of freedom and p-value."""

    block: tuple[str, ...]
    name: str
    statistic: float
    df: int
    p: float


def t_test(block: tuple[str, ...], name: str, t: float, df: int) -> Test:
    return Test(block, name, t, df, t_two_sided_p(t, df))


def holm_rejected(tests: Sequence[Test], alpha: float = FAMILY_ALPHA) -> list[Test]:
    """The tests Holm's step-down procedure rejects at family-wise level ``alpha``: by
    ascending p-value, the ``i``-th (from 0) is rejected while ``p <= alpha / (m - i)``."""
    rejected = []
    for index, test in enumerate(sorted(tests, key=lambda test: test.p)):
        if not test.p <= alpha / (len(tests) - index):
            break
        rejected.append(test)
    return rejected


def smallest_adjusted_p(tests: Sequence[Test]) -> float:
    """The smallest family-wise level at which the item fails: ``m`` times its smallest
    p-value (capped at 1). Under the null hypotheses it is at most ``a`` with probability at
    most ``a``, for every ``a``: how the calibration checks the correction at levels it can
    observe."""
    return min(1.0, len(tests) * min(test.p for test in tests))


def critical_t(df: int, tests: int, alpha: float = FAMILY_ALPHA) -> float:
    """The ``|t|`` above which one of ``tests`` t tests with ``df`` degrees of freedom is
    rejected by Holm's first step (``p <= alpha / tests``): the tolerance a report shows."""
    level = alpha / tests
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > level:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > level else (low, middle)
    return high
