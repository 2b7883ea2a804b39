"""The statistical MC checks: no false positives on the reference, overwhelming power on bias.

The false-positive rate measured over thousands of seeds is in docs/statistics.md; here a
smaller sample of independent trials (seed blocks far from the ones the checks use) keeps the
claim under test in CI.
"""

from __future__ import annotations

import pytest
from zoo import McGaussianUnitVariance, McNormalisedByM, McOneSampleRepeated, McTrueLabels

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.checks.mc import (
    CONVERGENCE_BOUNDS,
    STATISTICAL_CASE_IDS,
    T_CRITICAL,
    convergence_statistics,
    unbiased_statistics,
)
from kfac_conformance.checks.mc_calibration import calibrate, upper_bound_95
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.session import Session

FIRST_TRIAL = 1000  # seeds 32000 and up: disjoint from the checks' own seeds 0..31
TRIALS = 1


def _entry(case_id: str) -> CaseEntry:
    case = ALL_CASES[case_id]
    return CaseEntry(case.id, case.make_problem, case)


def _seeds() -> range:
    seeds = PROFILES["default"].mc_seeds
    return range(FIRST_TRIAL * seeds, (FIRST_TRIAL + 1) * seeds)


def test_no_false_positives_on_the_reference():
    results = calibrate(trials=TRIALS, first_trial=FIRST_TRIAL)
    assert {result.case_id for result in results} == STATISTICAL_CASE_IDS
    for result in results:
        assert len(result.max_abs_t) == len(result.ratios) == TRIALS
    for result in results:
        assert result.unbiased_failures == 0, (result.case_id, result.max_abs_t)
        assert result.convergence_failures == 0, (result.case_id, result.ratios)


# (mutant, its expected mean estimate / type-2 along the target)
BIASED = [(McNormalisedByM, 1 / 4), (McGaussianUnitVariance, 2.0)]


@pytest.mark.parametrize("mutant, factor", BIASED, ids=[m.__name__ for m, _ in BIASED])
def test_biased_mc_fails_with_overwhelming_margin(mutant, factor):
    session = Session(mutant(), PROFILES["default"])
    statistics = unbiased_statistics(session, _entry("deep-linear[mse-mean-3batches]"), _seeds())
    assert abs(statistics.scale_t) > 2 * T_CRITICAL, statistics
    assert abs(statistics.mean_ratio / factor - 1) < 0.1, statistics


def test_true_labels_are_infinitely_significant():
    # the empirical Fisher does not vary with the seed, so its bias has no noise at all
    session = Session(McTrueLabels(), PROFILES["default"])
    statistics = unbiased_statistics(session, _entry("mlp[tanh-ce-batch]"), _seeds())
    assert abs(statistics.scale_t) == float("inf") or abs(statistics.direction_t) == float("inf")


def test_a_repeated_sample_does_not_converge():
    session = Session(McOneSampleRepeated(), PROFILES["default"])
    ratio, rms = convergence_statistics(session, _entry("deep-linear[mse-mean-3batches]"), _seeds())
    assert ratio < CONVERGENCE_BOUNDS[0] / 1.5, (ratio, rms)


def test_upper_bound_95_matches_the_rule_of_three():
    # zero failures in n trials: the exact bound is 1 - 0.05^(1/n), about 3/n
    assert upper_bound_95(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-9)
    assert upper_bound_95(300, 300) == 1.0
    assert 5 / 100 < upper_bound_95(5, 100) < 0.12
