"""The scale profile (issue 23): probe products without dense blocks, its cases, and its mutants.

The profile's own cases take minutes (``nox -s scale`` runs them); these tests run its checks
on ``MINI_SCALE_CASES``, the same architectures small enough for CI but still with a batch of
more than one chunk and convolutions of more than 64 input channels, where the scale-only
mutants of ``tests/zoo/scale.py`` show.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from running import run_items
from zoo.scale import CHUNK, SCALE_MUTANTS, WIDE_CHANNELS

from kfac_conformance.cases.canonical import CANONICAL_CASES
from kfac_conformance.cases.scale import MINI_SCALE_CASES, SCALE_CASES
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.checks.scale import PROBES, scale_checks
from kfac_conformance.checks.scale_mc import (
    MC_SAMPLES,
    MIN_DATA,
    SEEDS,
    estimable,
    forms_over_seeds,
    scale_mc_checks,
)
from kfac_conformance.checks.scale_mc_calibration import calibrate
from kfac_conformance.comparison.kronecker_products import kronecker_product, output_side_form
from kfac_conformance.execution.plan import Item, case_entries, entries_of, plan
from kfac_conformance.execution.profiles import GENERAL_PROFILES
from kfac_conformance.oracle.blocks import exact_blocks
from kfac_conformance.oracle.products import LayerCurvature, gaussian_probes, layer_parameters
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_conformance.reports.report import Report, summary_text
from kfac_ref import compute_kfac

MINI_CHECKS = [*scale_checks(MINI_SCALE_CASES), *scale_mc_checks(MINI_SCALE_CASES)]
MINI_ITEMS = [Item(check, entry) for check in MINI_CHECKS for entry in check.own_cases]
# products of two float64 computations of the same matrix-vector product
ROUND_OFF = 1e-12


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize(
    "case_id",
    ["deep-linear[mse-sum-1batch]", "one-datum-mlp[tanh-ce-mean]", "conv-expand[last-layer"],
)
@pytest.mark.parametrize("curvature", ["ggn", "empirical"])
def test_probe_products_equal_the_dense_oracle_blocks_times_the_probe(case_id, curvature):
    case = next(c for c in CANONICAL_CASES if c.id.startswith(case_id) and c.num_batches == 1)
    problem = case.make_problem()
    blocks = exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, curvature
    )
    for layer in problem.layers:
        probe = gaussian_probes(layer_parameters(problem, layer), 1, seed=0)[0]
        expected = blocks[layer] @ _flat(probe)
        product = _flat(LayerCurvature(problem, layer, curvature)(probe))
        assert (product - expected).norm() <= ROUND_OFF * expected.norm()


@pytest.mark.parametrize("bias", ["separate", "joint"])
def test_kronecker_products_and_forms_equal_the_dense_blocks(bias):
    case = next(c for c in CANONICAL_CASES if c.id.startswith("conv-expand[last-layer"))
    problem = case.make_problem()
    result = compute_kfac(problem.model, problem.loss_func, problem.batches, bias=bias)
    for layer, factors in result.items():
        probe = gaussian_probes(layer_parameters(problem, layer), 1, seed=1)[0]
        expected = factors.to_dense() @ _flat(probe)
        assert (_flat(kronecker_product(factors, probe)) - expected).norm() <= (
            ROUND_OFF * expected.norm()
        )
        form = (factors.B * output_side_form(factors, probe)).sum()
        assert abs(form - _flat(probe) @ expected) <= ROUND_OFF * abs(_flat(probe) @ expected)


def test_the_scale_checks_run_in_the_scale_profile_only():
    for check in ALL_CHECKS:
        assert (check.profiles == {"scale"}) == (check.family == "scale"), check.id
    for profile in GENERAL_PROFILES:
        without_scale = [check for check in ALL_CHECKS if check.family != "scale"]
        entries = case_entries(profile)
        assert [i.id for i in plan(profile, entries)] == [
            i.id for i in plan(profile, entries, checks=without_scale)
        ]
    assert {item.check.family for item in plan("scale", case_entries("scale"))} == {"scale"}


def test_the_scale_cases_total_ten_million_parameters():
    assert sum(case.num_parameters() for case in SCALE_CASES) >= 10_000_000


@pytest.mark.parametrize("cases", [SCALE_CASES, MINI_SCALE_CASES], ids=["scale", "mini"])
def test_the_scale_cases_hold_the_conditions_under_which_the_scale_mutants_show(cases):
    problems = [case.make_problem() for case in cases]
    assert any(X.shape[0] > CHUNK for problem in problems for X, _ in problem.batches)
    assert any(
        module.in_channels > WIDE_CHANNELS
        for problem in problems
        for module in problem.model.modules()
        if isinstance(module, torch.nn.Conv2d)
    )


@pytest.fixture(scope="module")
def reference_results():
    return list(run_items(ReferenceCandidate(), MINI_ITEMS, "scale"))


def test_the_reference_passes_every_scale_item_with_its_probes_and_peak_memory(
    reference_results,
):
    assert len(reference_results) == len(MINI_ITEMS) >= 8
    for result in reference_results:
        assert result.status == "passed", (result.item_id, result.message)
        assert result.details["probes_per_layer"] == PROBES
        assert result.observed <= result.tolerance
        peak = result.details["peak_memory_bytes"]
        assert peak is None or peak >= 0


def test_the_text_summary_lists_every_scale_items_peak_memory(reference_results):
    report = Report("kfac_ref", "kfac_ref", None, "scale", "cpu", [i.id for i in MINI_ITEMS])
    report.results += reference_results
    text = summary_text(report)
    assert f"MEASURED ({len(MINI_ITEMS)}): time and peak memory per item" in text
    for item in MINI_ITEMS:
        assert f"  {item.id}: " in text
    assert "peak memory: resident set high-water mark" in text


@pytest.mark.parametrize("mutant", SCALE_MUTANTS, ids=lambda mutant: mutant.__name__)
def test_the_scale_profile_kills_the_mutant_with_a_failure(mutant):
    items = [item for item in MINI_ITEMS if item.check.id in mutant.killers]
    results = list(run_items(mutant(), items, "scale"))
    assert not [r.item_id for r in results if r.status == "error"]
    assert [r.item_id for r in results if r.status == "failed"], [r.status for r in results]


def test_the_scale_mutants_equal_the_reference_on_every_block_profile_problem():
    """Where every batch holds at most one chunk and every convolution at most 64 input
    channels the mutants are kfac_ref itself; every problem of the block profiles does."""
    for profile in GENERAL_PROFILES:
        entries = case_entries(profile)
        for check in ALL_CHECKS:
            if profile not in check.profiles:
                continue
            for entry in entries_of(check, entries):
                problem = entry.make_problem()
                assert max(X.shape[0] for X, _ in problem.batches) <= CHUNK, entry.id
                for module in problem.model.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        assert module.in_channels <= WIDE_CHANNELS, entry.id


PEAK_OF_A_FRESH_ALLOCATION = """
import torch
from kfac_conformance.execution.peak_memory import PeakMemory
with PeakMemory() as peak:
    tensor = torch.ones(64 * 2**20 // 8, dtype=torch.float64)
    del tensor
print(peak.bytes)
"""


def test_peak_memory_sees_a_torch_allocation():
    """In a fresh process: in this one, memory that earlier tests freed may still be resident
    in the allocator's free lists, and an allocation served from it does not grow the
    resident set (the measurement is the growth, docs/performance.md)."""
    size = 64 * 2**20
    run = subprocess.run(
        [sys.executable, "-c", PEAK_OF_A_FRESH_ALLOCATION],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    peak = run.stdout.strip()
    if peak == "None":
        pytest.skip("this system cannot reset the resident set's high-water mark")
    assert int(peak) >= size // 2


def test_the_mc_check_runs_on_the_deep_linear_network_alone():
    """Its statistic needs type-2 KFAC exact on every layer and enough data for near-normal
    forms: of the profile's cases only the deep linear network has both."""
    for cases in (SCALE_CASES, MINI_SCALE_CASES):
        chosen = [case for case in cases if estimable(case)]
        assert [case.id.split("[")[0] for case in chosen] == ["deep-linear"]
        assert chosen[0].num_data >= max(MIN_DATA, CHUNK + 1)
    assert [item.id for item in plan("scale", case_entries("scale")) if "mc" in item.id] == [
        f"scale/mc-unbiased[{chosen_id}]"
        for chosen_id in (case.id for case in SCALE_CASES if estimable(case))
    ]


@pytest.mark.parametrize("bias", ["separate", "joint"])
def test_type_2_kfac_has_the_exact_ggn_forms_on_the_deep_linear_network(bias):
    """Type-2 KFAC is the GGN block there: given in place of the MC estimates, its forms
    equal the exact side's to round-off (a separate bias without the GGN's cross terms), and
    the t tests see no bias."""
    case = next(case for case in MINI_SCALE_CASES if estimable(case))
    problem = case.make_problem()
    layers = case.exact_layers("type-2", "expand")

    def type_2(seed: int):
        return compute_kfac(problem.model, problem.loss_func, problem.batches, bias=bias)

    forms = forms_over_seeds(case.make_problem(), layers, "expand", type_2, range(3))
    assert len(forms) == PROBES * len(layers)
    for form in forms:
        assert form.exact > 0
        assert (form.ratios - 1).abs().max().item() <= ROUND_OFF
        assert form.test().statistic == 0


def test_the_mc_calibration_runs_independent_trials_of_the_check():
    """Two trials of the calibration on the small deep linear network: each fails with
    probability at most about 1e-6 (the check's family-wise level), and the forms' mean ratio
    is one: every form's seed-to-seed spread is at most sqrt(2 / (N M)), so is that of a
    seed's mean form, and the mean over the 2 x 16 independent seeds is held to 5 of its
    spreads (false-positive rate below 1e-6 for near-normal forms)."""
    case = next(case for case in MINI_SCALE_CASES if estimable(case))
    figures = calibrate(case, trials=2)
    assert figures["failed_at_family_alpha"] == 0
    assert figures["tests_per_trial"] == PROBES * len(case.exact_layers("type-2", "expand"))
    spread = (2 / (case.num_data * MC_SAMPLES)) ** 0.5
    assert abs(figures["mean_ratio"] - 1) <= 5 * spread / (2 * SEEDS) ** 0.5
