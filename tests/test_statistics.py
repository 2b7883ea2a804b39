"""The statistical MC checks: no false positives on the reference, overwhelming power on bias,
per layer, with a multiple-testing correction that holds the stated level.

The false-positive rate measured over thousands of seeds is in docs/statistics.md; here a
smaller sample of independent trials (seed blocks far from the ones the checks use) keeps the
claim under test in CI.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from zoo import (
    McConvBlockSixteenth,
    McGaussianUnitVariance,
    McNormalisedByM,
    McOneSampleRepeated,
    McTrueLabels,
)

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks import significance
from kfac_conformance.checks.base import CaseEntry
from kfac_conformance.checks.mc import STATISTICAL_CASE_IDS
from kfac_conformance.checks.mc_calibration import (
    CHECK_IDS,
    binomial_cdf,
    calibrate,
    interval_95,
    upper_bound_95,
)
from kfac_conformance.checks.mc_replay import ReferenceReplay, verify
from kfac_conformance.checks.mc_statistics import (
    CONVERGENCE_BOUNDS,
    BlockEstimates,
    block_estimates,
    block_statistics,
    convergence_failures,
    convergence_statistics,
    mc_requests,
    unbiased_statistics,
    unbiased_tests,
)
from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.execution.session import Session
from kfac_conformance.reference_candidate import ReferenceCandidate

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
        for check_id in CHECK_IDS:
            assert len(result.trials[check_id]) == TRIALS
            assert result.failures(check_id) == 0, (result.case_id, check_id, result.trials)


# (mutant, its expected mean estimate / type-2 along the target on every layer)
BIASED = [(McNormalisedByM, 1 / 4), (McGaussianUnitVariance, 2.0)]


@pytest.mark.parametrize("mutant, factor", BIASED, ids=[m.__name__ for m, _ in BIASED])
def test_biased_mc_fails_with_overwhelming_margin_on_every_layer(mutant, factor):
    session = Session(mutant(), PROFILES["default"])
    statistics, _ = unbiased_statistics(session, _entry("deep-linear[mse-mean-3batches]"), _seeds())
    critical = significance.critical_t(len(_seeds()) - 1, len(unbiased_tests(statistics)))
    assert len(statistics) == 3  # one block per layer
    for block in statistics:
        assert abs(block.scale_t) > 2 * critical, block
        assert abs(block.mean_ratio / factor - 1) < 0.1, block


def test_true_labels_are_infinitely_significant():
    # the empirical Fisher does not vary with the seed, so its bias has no noise at all
    session = Session(McTrueLabels(), PROFILES["default"])
    statistics, _ = unbiased_statistics(session, _entry("mlp[tanh-ce-batch]"), _seeds())
    assert any(math.isinf(t) for block in statistics for t in (block.scale_t, block.direction_t))
    assert significance.holm_rejected(unbiased_tests(statistics))


def test_a_repeated_sample_does_not_converge_on_any_layer():
    session = Session(McOneSampleRepeated(), PROFILES["default"])
    statistics = convergence_statistics(session, _entry("deep-linear[mse-mean-3batches]"), _seeds())
    assert all(block.ratio < CONVERGENCE_BOUNDS[0] / 1.5 for block in statistics), statistics
    assert len(convergence_failures(statistics)) == len(statistics) == 3


def test_a_convolution_block_hidden_in_a_pooled_statistic_is_found_per_layer():
    """The conv blocks at 1/16 are small next to the Linear block: the statistics of all
    layers pooled stay far below any threshold, the per-layer tests reject exactly the convs."""
    case = "conv-reduce[stride2-pad1-mean-pool]"
    session = Session(McConvBlockSixteenth(), PROFILES["default"])
    request = mc_requests(session, _entry(case))[0]
    blocks = block_estimates(session, _entry(case), request, 4, _seeds())
    pooled = block_statistics(
        BlockEstimates(
            "all",
            request.kfac_approx,
            torch.cat([block.rows for block in blocks], dim=1),
            torch.cat([block.target for block in blocks]),
        )
    )
    assert max(abs(pooled.scale_t), abs(pooled.direction_t)) < 4, pooled
    statistics, _ = unbiased_statistics(session, _entry(case), _seeds())
    rejected = {test.block for test in significance.holm_rejected(unbiased_tests(statistics))}
    assert {layer for layer, _ in rejected} == {"0", "1"}  # the two Conv2d layers, not '3'
    assert {flavour for _, flavour in rejected} == {"expand", "reduce"}
    for block in statistics:
        if block.layer != "3":
            assert abs(block.mean_ratio * 16 - 1) < 0.2, block


class McNewLayerBlockSixteenth(McConvBlockSixteenth):
    """The same defect on the layer types of issue 22."""

    scaled_layer_types = (nn.Conv1d, nn.Conv3d, nn.Embedding)
    capabilities = Capabilities(layer_types=frozenset({"Linear", "Conv1d", "Conv3d", "Embedding"}))


@pytest.mark.parametrize(
    "case, wrong_layers",
    [
        ("cnn1d[tanh-ce]", {"0", "2"}),  # the Conv1d layers, not the Linear '4'
        ("cnn3d[sigmoid-mse-feature-map]", {"0", "2"}),  # both layers are Conv3d
        ("embedding[tanh-bce-mean-pool]", {"0"}),  # the Embedding, not the Linear '3'
    ],
)
def test_the_statistical_cases_of_the_new_layer_types_find_a_wrong_block_on_them(
    case, wrong_layers
):
    session = Session(McNewLayerBlockSixteenth(), PROFILES["default"])
    statistics, _ = unbiased_statistics(session, _entry(case), _seeds())
    rejected = {test.block for test in significance.holm_rejected(unbiased_tests(statistics))}
    assert {layer for layer, _ in rejected} == wrong_layers
    assert {flavour for _, flavour in rejected} == {"expand", "reduce"}


# Student t: two-sided 5% and 0.1% points from the standard tables
T_TABLE = [(1, 12.706, 0.05), (2, 4.303, 0.05), (5, 2.571, 0.05), (15, 2.131, 0.05)]
T_TABLE += [(15, 4.073, 0.001), (31, 2.040, 0.05), (100, 1.984, 0.05)]


@pytest.mark.parametrize("df, t, p", T_TABLE)
def test_t_p_values_match_the_tables(df, t, p):
    assert significance.t_two_sided_p(t, df) == pytest.approx(p, rel=2e-3)
    assert significance.t_two_sided_p(-t, df) == significance.t_two_sided_p(t, df)


def test_t_p_values_in_the_far_tail_match_a_numerical_integral():
    def density(x: float, df: int) -> float:
        constant = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        return constant * (1 + x * x / df) ** (-(df + 1) / 2)

    for t, df in ((8.0, 15), (8.0, 31), (6.0, 31)):
        steps = 20000  # x = t / u maps the tail onto (0, 1]; midpoint rule
        tail = sum(
            density(t / ((i + 0.5) / steps), df) * t / ((i + 0.5) / steps) ** 2 / steps
            for i in range(steps)
        )
        assert significance.t_two_sided_p(t, df) == pytest.approx(2 * tail, rel=1e-6)
    assert significance.t_two_sided_p(float("inf"), 3) == 0.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        significance.t_two_sided_p(1.0, 0)


def _tests(p_values: list[float]) -> list[significance.Test]:
    return [significance.Test((str(i),), "scale", 0.0, 31, p) for i, p in enumerate(p_values)]


def test_holm_steps_down_and_stops_at_the_first_acceptance():
    tests = _tests([0.004, 0.03, 0.012, 0.5])
    # levels 0.05/4, 0.05/3, 0.05/2: 0.004 and 0.012 rejected, 0.03 > 0.025 stops
    assert [t.p for t in significance.holm_rejected(tests, alpha=0.05)] == [0.004, 0.012]
    assert significance.holm_rejected(_tests([0.03, 0.03]), alpha=0.05) == []
    assert significance.smallest_adjusted_p(tests) == pytest.approx(0.016)


def test_critical_values_are_the_first_step_of_holm():
    for df, count in ((31, 6), (15, 10)):
        critical = significance.critical_t(df, count)
        level = significance.FAMILY_ALPHA / count
        assert significance.t_two_sided_p(critical, df) == pytest.approx(level, rel=1e-6)


def test_the_correction_holds_the_level_on_independent_normal_tests():
    """Null p-values of 8 independent normal tests per item: the family rejects in about
    alpha of the items, never much more (binomial 99.9% bound)."""
    generator = torch.Generator().manual_seed(0)
    items, alpha = 4000, 0.05
    z = torch.randn(items, 8, generator=generator, dtype=torch.float64)
    rejected = sum(
        bool(significance.holm_rejected(_tests_of(row), alpha=alpha)) for row in z.tolist()
    )
    assert rejected / items < alpha + 3.3 * math.sqrt(alpha / items), rejected
    assert rejected / items > alpha / 2, rejected  # independent tests: Bonferroni is near exact


def _tests_of(z_values: list[float]) -> list[significance.Test]:
    return [
        # normal p-values; Holm does not read the degrees of freedom
        significance.Test((str(i),), "z", z, 0, math.erfc(abs(z) / math.sqrt(2)))
        for i, z in enumerate(z_values)
    ]


def test_upper_bound_95_matches_the_rule_of_three():
    # zero failures in n trials: the exact bound is 1 - 0.05^(1/n), about 3/n
    assert upper_bound_95(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-9)
    assert upper_bound_95(0, 6000) == pytest.approx(1 - 0.05 ** (1 / 6000), rel=1e-9)
    assert upper_bound_95(300, 300) == 1.0
    assert 5 / 100 < upper_bound_95(5, 100) < 0.12


def test_binomial_interval_covers_the_rate_and_handles_large_counts():
    assert binomial_cdf(3, 10, 0.5) == pytest.approx(176 / 1024)
    low, high = interval_95(30, 6000)  # 0.5%: far beyond what float binomial terms reach
    assert low < 30 / 6000 < high
    assert low == pytest.approx(0.00338, rel=0.02) and high == pytest.approx(0.00713, rel=0.02)
    assert interval_95(0, 600)[0] == 0.0


def test_the_replay_equals_the_reference_and_notices_a_difference():
    case = "cnn[relu-ce]"
    session = Session(ReferenceCandidate(), PROFILES["default"])
    request = mc_requests(session, _entry(case))[1]  # reduce
    called = {
        block.layer: block.rows
        for block in block_estimates(session, _entry(case), request, 4, range(3))
    }
    replay = ReferenceReplay(session.fresh(_entry(case)), request)
    verify(replay.kfac_rows(4, range(3)), called, "KFAC")
    with pytest.raises(RuntimeError, match="differs from kfac_ref on layer '0'"):
        verify(replay.kfac_rows(4, range(1, 4)), called, "KFAC")
