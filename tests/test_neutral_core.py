"""The framework-neutral core (kfac_conformance.neutral): importable without torch and JAX,
and in step with the PyTorch suite on the same fixtures (dense blocks, errors, tolerances,
counts, conventions, diagnoses), so that the two cannot drift; its runner's verdicts on
numpy candidates whose right answer is known."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import neutral_candidates
import numpy as np
import pytest
import torch
from import_blocking import blocking_prelude

from kfac_conformance.cases import stored as torch_fixtures
from kfac_conformance.checks import distributed as distributed_checks
from kfac_conformance.checks.invariance import concatenated
from kfac_conformance.comparison import blocks as torch_blocks
from kfac_conformance.comparison.diagnosis import problem_counts
from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import (
    CURVATURE_CONVENTIONS,
    EMPIRICAL_FISHER_CONVENTIONS,
    Conventions,
)
from kfac_conformance.execution.session import with_reduction
from kfac_conformance.neutral import comparison, fixtures, plan, runner, transforms
from kfac_conformance.neutral.checks import WORLD_SIZES
from kfac_conformance.neutral.factors import EigenFactors, Factors, dense_block, joint_order
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors
from kfac_ref.factors import joint_order as torch_joint_order

# two float64 computations of one quantity by different code (numpy and torch): round-off
AGREE = 1e-13
CASE_IDS = fixtures.case_ids()
AGREEMENT_CASE_IDS = [c for c in CASE_IDS if fixtures.load(c).kind == "agreement"]
NEUTRAL_MODULES = [
    "kfac_conformance.neutral",
    *(
        f"kfac_conformance.neutral.{name}"
        for name in (
            "fixtures",
            "factors",
            "comparison",
            "statistics",
            "candidate",
            "plan",
            "checks",
            "report",
            "runner",
            "cli",
        )
    ),
]
BLOCK_TORCH_AND_JAX = blocking_prelude("torch", "jax", "jaxlib", "kfac_ref")


def test_the_core_imports_and_runs_with_torch_and_jax_unimportable():
    code = BLOCK_TORCH_AND_JAX + textwrap.dedent(f"""
        import importlib
        for module in {NEUTRAL_MODULES!r}:
            importlib.import_module(module)
        from kfac_conformance.neutral import fixtures, plan
        items = plan.plan()
        case = fixtures.load("cnn[relu-ce]")
        blocks = case.reference_kfac("type-2", "reduce", "joint")
        print("items", len(items), "torch" in sys.modules, "jax" in sys.modules)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    count, torch_imported, jax_imported = done.stdout.split()[1:]
    assert int(count) > 100 and (torch_imported, jax_imported) == ("False", "False")


def random_factors(generator: torch.Generator, bias: str) -> tuple[KroneckerFactors, Factors]:
    d_in, d_out = 3 + (bias == "joint"), 2
    A = torch.randn(d_in, d_in, generator=generator, dtype=torch.float64)
    B = torch.randn(d_out, d_out, generator=generator, dtype=torch.float64)
    return KroneckerFactors(A, B, bias), Factors(A.numpy(), B.numpy(), bias)


@pytest.mark.parametrize("bias", ["none", "separate", "joint"])
def test_dense_blocks_are_kfac_refs(bias: str):
    generator = torch.Generator().manual_seed(0)
    torch_factors, factors = random_factors(generator, bias)
    np.testing.assert_array_equal(dense_block(factors), torch_factors.to_dense().numpy())
    QA = torch.linalg.qr(torch_factors.A)[0]
    QB = torch.linalg.qr(torch_factors.B)[0]
    S = torch.rand(QB.shape[0], QA.shape[0], generator=generator, dtype=torch.float64)
    S_bias = torch.rand(QB.shape[0], generator=generator, dtype=torch.float64)
    S_bias = S_bias if bias == "separate" else None
    torch_ekfac = EKFACFactors(QA, QB, S, bias, S_bias)
    ekfac = EigenFactors(
        QA.numpy(), QB.numpy(), S.numpy(), bias, None if S_bias is None else S_bias.numpy()
    )
    expected = torch_ekfac.to_dense().numpy()
    assert comparison.relative_error(dense_block(ekfac), expected) <= AGREE


def test_joint_order_is_kfac_refs_and_puts_weights_then_biases():
    order = joint_order(3, 5)
    assert order.tolist() == torch_joint_order(3, 5).tolist()
    # [W | b] row-major: output o's weights at o*5 + 0..3, its bias at o*5 + 4
    assert order.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 4, 9, 14]


def test_factors_refuse_bad_input_by_name():
    with pytest.raises(ValueError, match="factor A must be a square matrix"):
        Factors(np.zeros((2, 3)), np.eye(2))
    with pytest.raises(TypeError, match="factor B must hold floating-point numbers"):
        Factors(np.eye(2), np.eye(2, dtype=int))
    with pytest.raises(ValueError, match="bias must be one of"):
        Factors(np.eye(2), np.eye(2), "both")
    with pytest.raises(ValueError, match="S_bias is required"):
        EigenFactors(np.eye(2), np.eye(2), np.ones((2, 2)), "separate")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_tolerances_are_the_torch_sides(dtype: torch.dtype):
    expected = torch_blocks.round_off_tolerance(dtype)
    name = str(dtype).removeprefix("torch.")
    assert comparison.tolerance(name) == expected
    if name in ("float64", "float32", "float16"):
        assert comparison.tolerance(np.dtype(name)) == expected
    assert comparison.tolerance("float32") == 1e-4 and comparison.tolerance("float64") == 1e-10


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_counts_and_conventions_are_the_torch_sides(case_id: str):
    """The stored counts are what the PyTorch suite counts on the problem, and every declarable
    convention converts by the same factor on both sides."""
    case = fixtures.load(case_id)
    problem = torch_fixtures.load_problem(case_id)
    counts, shared = problem_counts(problem)
    assert case.counts == pytest.approx(counts, rel=AGREE)
    assert case.shared_positions == {layer: shared.get(layer, 1) for layer in problem.layers}
    torch_quantities = problem.scale_quantities()
    for field, registry in (
        ("curvature", CURVATURE_CONVENTIONS),
        ("empirical_fisher", EMPIRICAL_FISHER_CONVENTIONS),
    ):
        for name in registry:
            declared = Conventions(**{field: name})
            for fisher_type in ("type-2", "mc", "empirical", "forward-only"):
                neutral = conventions.scale(declared, fisher_type, case.quantities())
                torch_side = conventions.scale(declared, fisher_type, torch_quantities)
                assert neutral == pytest.approx(torch_side, rel=AGREE), (field, name, fisher_type)


@pytest.mark.parametrize("bias", ["joint", "separate"])
@pytest.mark.parametrize("case_id", AGREEMENT_CASE_IDS)
def test_errors_are_the_torch_sides_on_the_stored_blocks(case_id: str, bias: str):
    """The reference's stored KFAC against the stored exact GGN (not equal: agreement cases are
    not exact), measured by both sides, with the separate-bias restriction."""
    case = fixtures.load(case_id)
    exact = torch_fixtures.load_exact_blocks(case_id, "ggn")
    for layer, factors in case.reference_kfac("type-2", "expand", bias).items():
        torch_groups = tuple(
            KroneckerFactors(torch.from_numpy(g.A.copy()), torch.from_numpy(g.B.copy()), g.bias)
            for g in getattr(factors, "groups", (factors,))
        )
        torch_factors = torch_groups[0] if len(torch_groups) == 1 else GroupedFactors(torch_groups)
        target = torch_blocks.restrict(exact[layer], torch_blocks.kfac_pattern(torch_factors))
        expected = torch_blocks.relative_error(torch_factors.to_dense(), target)
        neutral = comparison.layer_error(factors, 1.0, case.exact("ggn")[layer])
        assert neutral == pytest.approx(expected, rel=AGREE)
        assert comparison.fitted_factor(dense_block(factors), target.numpy()) == pytest.approx(
            torch_blocks.fitted_factor(torch_factors.to_dense(), target), rel=AGREE
        )


def test_diagnoses_word_the_torch_sides():
    case = fixtures.load("mlp[tanh-ce-batch]")
    reference = case.reference_kfac("type-2", "expand", "joint")["2"]
    expected = dense_block(reference)
    tol = comparison.tolerance("float64")

    def both(factors: Factors) -> tuple[str | None, str | None]:
        torch_factors = KroneckerFactors(
            torch.from_numpy(np.array(factors.A)),
            torch.from_numpy(np.array(factors.B)),
            factors.bias,
        )
        return (
            comparison.diagnose(factors, 1.0, expected, tol),
            torch_blocks.diagnose(torch_factors, torch.from_numpy(expected), tol),
        )

    neutral, torch_side = both(Factors(reference.A, 3 * reference.B, "joint"))
    assert torch_side.startswith("off by a constant factor x 3")
    assert neutral.startswith("off by a constant factor x 3")
    broken = Factors(reference.A, np.full_like(reference.B, np.nan), "joint")
    assert both(broken)[0] == both(broken)[1] == "the block has NaN or inf entries"
    square = np.eye(3) + 0.1 * np.arange(9.0).reshape(3, 3)
    square = square @ square.T
    right, swapped = (
        Factors(square, 2 * square + np.eye(3)),
        Factors(2 * square + np.eye(3), square),
    )
    neutral = comparison.diagnose(swapped, 1.0, dense_block(right), tol)
    torch_side = torch_blocks.diagnose(
        KroneckerFactors(torch.from_numpy(swapped.A), torch.from_numpy(swapped.B)),
        torch.from_numpy(dense_block(right)),
        tol,
    )
    assert neutral == torch_side and neutral.startswith("Kronecker order swapped")


def run(candidate_class, items: list[plan.Item]) -> dict[str, dict]:
    document = runner.run(candidate_class.__name__, candidate_class(), items, "test")
    assert document["complete"] and document["schema_version"] == 1
    assert document["numpy_version"] == np.__version__ and document["torch_version"] == "not used"
    return {result["id"]: result for result in document["results"]}


AGREEMENT_ITEMS = plan.plan(
    check_ids=["agreement/type-2", "agreement/empirical", "agreement/forward-only"]
)


def test_agreement_is_planned_where_the_pytorch_suite_plans_it():
    planned = {item.id for item in AGREEMENT_ITEMS}
    index = torch_fixtures.load_index()["cases"]
    expected = {
        f"agreement/{fisher_type}[{case_id}]"
        for case_id, record in index.items()
        if record["kind"] == "agreement"
        for fisher_type in ("type-2", "empirical", "forward-only")
    }
    assert planned == expected


@pytest.mark.parametrize(
    "candidate_class",
    [
        neutral_candidates.StoredReference,
        neutral_candidates.SeparateBias,
        neutral_candidates.ConvertsToTutorialScale,
        neutral_candidates.Float32,
    ],
)
def test_right_answers_pass_agreement(candidate_class):
    results = run(candidate_class, AGREEMENT_ITEMS)
    bound = comparison.tolerance(candidate_class.dtype)
    for item, result in results.items():
        assert result["status"] == "passed", (item, result["message"])
        assert result["observed"] <= result["tolerance"] == bound


def test_wrong_answers_fail_agreement_with_a_diagnosis():
    doubled = run(neutral_candidates.DoubledB, AGREEMENT_ITEMS)
    for item, result in doubled.items():
        assert result["status"] == "failed", item
        assert "off by a constant factor x 2" in result["diagnosis"], result
    cast = run(neutral_candidates.Float32DeclaredFloat64, AGREEMENT_ITEMS[:3])
    for item, result in cast.items():
        assert result["status"] == "failed" and result["tolerance"] == 1e-10, item
        assert "float32 round-off level" in result["diagnosis"], result


def test_refusals_skip_and_crashes_are_errors():
    shared = [item for item in AGREEMENT_ITEMS if item.flavours == ("expand", "reduce")][:1]
    assert shared, "an agreement item compares expand and reduce"
    (result,) = run(neutral_candidates.RefusesReduce, shared).values()
    assert result["status"] == "passed"
    (result,) = run(neutral_candidates.Crashes, shared).values()
    assert result["status"] == "error" and "RuntimeError: boom" in result["message"]
    (result,) = run(neutral_candidates.RefusesInCompute, shared).values()
    assert result["status"] == "skipped" and "refused by the candidate" in result["message"]


def test_the_report_is_written_in_the_suites_schema(tmp_path):
    path = tmp_path / "report.json"
    items = AGREEMENT_ITEMS[:2]
    runner.run("stored", neutral_candidates.StoredReference(), items, "test", report_path=path)
    document = json.loads(path.read_text())
    assert document["summary"] == {
        "total": 2, "ran": 2, "passed": 2, "failed": 0, "error": 0, "skipped": 0,
        "xfailed": 0, "xpassed": 0, "not_run": 0,
    }  # fmt: skip
    assert [r["id"] for r in document["results"]] == [item.id for item in items]
    assert document["candidate"]["conventions"] == {
        "curvature": "tutorial",
        "empirical_fisher": "tutorial",
    }


def test_a_candidate_missing_part_of_the_protocol_is_refused_by_name():
    registry = {"half": "neutral_candidates:LacksFramework"}
    with pytest.raises(TypeError, match="lacks \\[.framework., .dtype.\\]"):
        runner.load_candidate("half", registry)


def test_mc_unbiased_on_agreement_cases_targets_the_stored_type2_kfac():
    items = [
        item
        for item in plan.plan(check_ids=["mc/unbiased"])
        if fixtures.load(item.case_id).kind == "agreement"
    ]
    assert {item.case_id for item in items} == {
        "mlp[tanh-ce-batch]",
        "cnn[relu-ce]",
        "cnn1d[tanh-ce]",
        "cnn3d[sigmoid-mse-feature-map]",
        "embedding[tanh-bce-mean-pool]",
        "sequence[tanh-ce-per-position]",
    }
    for result in run(neutral_candidates.McIsItsExpectation, items).values():
        assert result["status"] == "passed", result
    for result in run(neutral_candidates.McDoubled, items).values():
        assert result["status"] == "failed", result
        assert result["diagnosis"] == "off by a constant factor x 2?", result


NUMPY_KFAC_CASES = [
    "mlp[tanh-ce-batch]",
    "deep-linear[mse-mean-3batches]",
    "identical-inputs-mlp[ce-sum]",
]


def items_on(case_ids: list[str], check_prefix: str) -> list[plan.Item]:
    return [item for item in plan.plan(case_ids) if item.check_id.startswith(check_prefix)]


def test_an_independent_numpy_kfac_passes_exactness_agreement_and_the_invariances():
    items = [
        item
        for item in plan.plan(NUMPY_KFAC_CASES)
        if "empirical" in item.fisher_types and item.check_id != "mc/unbiased"
    ]
    checks = {item.check_id for item in items}
    assert {"agreement/empirical", "exactness/empirical-expand", "invariance/permutation"} <= checks
    assert {"invariance/mean-vs-sum", "invariance/batch-splitting"} <= checks
    for item, result in run(neutral_candidates.NumpyEmpiricalKFAC, items).items():
        assert result["status"] == "passed", (item, result["message"])
        assert result["observed"] <= 1e-10, item


def test_invariances_catch_what_they_are_for():
    mean_vs_sum = items_on(["mlp[tanh-ce-batch]"], "invariance/mean-vs-sum")
    (result,) = run(neutral_candidates.ReductionIgnored, mean_vs_sum).values()
    assert result["status"] == "failed" and "off by a constant factor" in result["diagnosis"]
    order = items_on(["mlp[tanh-ce-batch]"], "invariance/")
    results = run(neutral_candidates.OrderWeighted, order)
    statuses = {item.check_id: results[item.id]["status"] for item in order}
    assert statuses == {
        "invariance/mean-vs-sum": "passed",
        "invariance/batch-splitting": "passed",
        "invariance/permutation": "failed",
    }


@pytest.mark.parametrize("case_id", ["mlp[tanh-ce-batch]", "deep-linear[mse-mean-uneven-batches]"])
def test_transformed_cases_are_the_torch_sides(case_id: str):
    """The other reduction's R and the concatenated data are what the PyTorch invariances use."""
    case = fixtures.load(case_id)
    problem = torch_fixtures.load_problem(case_id)
    other = "sum" if case.reduction == "mean" else "mean"
    reduced = transforms.with_reduction(case, other)
    torch_R = with_reduction(problem, other).scale_quantities()["R"]
    assert reduced.counts["R"] == pytest.approx(torch_R, rel=AGREE) and reduced.reduction == other
    assert reduced.id != case.id and reduced.batches[0][0] is case.batches[0][0]
    joined = transforms.concatenated(case)
    ((X, y),) = concatenated(torch_fixtures.load_problem(case_id)).batches
    assert len(joined.batches) == 1 and joined.counts["K"] == 1
    np.testing.assert_array_equal(joined.batches[0][0], X.numpy())
    np.testing.assert_array_equal(joined.batches[0][1], y.numpy())
    split = transforms.split_in_two(case)
    assert [len(X) for X, _ in split.batches] == [
        case.num_data // 2,
        case.num_data - case.num_data // 2,
    ]
    permuted = transforms.permuted(case)
    assert sorted(map(tuple, permuted.batches[0][0])) == sorted(map(tuple, X.numpy()))
    assert not np.array_equal(permuted.batches[0][0], X.numpy())


DISTRIBUTED_ITEMS = plan.plan(plan.DISTRIBUTED_CASE_IDS, distributed=True)


def test_distributed_items_are_planned_only_for_a_runner_that_asks_for_them():
    assert not [item for item in plan.plan() if item.check_id.startswith("distributed/")]
    distributed = {
        item.id for item in DISTRIBUTED_ITEMS if item.check_id.startswith("distributed/")
    }
    assert distributed == {
        f"distributed/kfac-{fisher_type}[{case_id}]"
        for fisher_type in ("type-2", "empirical", "forward-only")
        for case_id in plan.DISTRIBUTED_CASE_IDS
    }


@pytest.mark.parametrize("case_id", plan.DISTRIBUTED_CASE_IDS)
def test_shards_hold_every_batch_in_device_order_with_their_own_counts(case_id: str):
    """Each shard's counts are those of its own data, as the PyTorch check's shards have them."""
    case = fixtures.load(case_id)
    problem = torch_fixtures.load_problem(case_id)
    for world in WORLD_SIZES:
        shards = transforms.sharded(case, world)
        assert len({shard.id for shard in shards} | {case.id}) == world + 1
        for index, (X, y) in enumerate(case.batches):
            np.testing.assert_array_equal(np.concatenate([s.batches[index][0] for s in shards]), X)
            np.testing.assert_array_equal(np.concatenate([s.batches[index][1] for s in shards]), y)
        sizes = [case.num_data // world] * world
        torch_shards = distributed_checks.shards(problem, sizes)
        for shard, torch_shard in zip(shards, torch_shards, strict=True):
            assert shard.num_data == shard.counts["N"] == case.num_data // world
            torch_R = torch_shard.scale_quantities()["R"]
            assert shard.counts["R"] == pytest.approx(torch_R, rel=AGREE)


def test_sharding_refuses_shards_of_unequal_size_by_name():
    case = fixtures.load("mlp[tanh-ce-batch]")
    with pytest.raises(ValueError, match=r"batches of \[8, 8\] data do not split into 3 equal"):
        transforms.sharded(case, 3)


def distributed_empirical() -> list[plan.Item]:
    return [
        item
        for item in DISTRIBUTED_ITEMS
        if item.check_id == "distributed/kfac-empirical" and item.case_id in NUMPY_KFAC_CASES
    ]


def test_a_data_parallel_numpy_kfac_passes_the_distributed_items():
    items = distributed_empirical()
    assert len(items) == 2
    for item, result in run(neutral_candidates.NumpyDataParallel, items).items():
        assert result["status"] == "passed", (item, result["message"])
        assert result["observed"] <= result["tolerance"] == 1e-10, item


def test_the_distributed_items_catch_devices_combined_wrongly_and_name_the_shard():
    items = distributed_empirical()
    for item, result in run(neutral_candidates.DevicesNotCombined, items).items():
        assert result["status"] == "failed", item
        assert "device 0 of W=2" in result["message"], result
        assert "of this device's shard alone" in result["diagnosis"], result
    for result in run(neutral_candidates.GradientSumsNotCombined, items).values():
        assert result["status"] == "failed" and "of W=2" in result["message"], result


def test_the_distributed_items_skip_a_one_device_candidate_and_error_on_a_malformed_answer():
    item = distributed_empirical()[:1]
    (result,) = run(neutral_candidates.NumpyEmpiricalKFAC, item).values()
    assert result["status"] == "skipped", result
    assert "computes on one device only (it has no compute_on_devices)" in result["message"]
    (result,) = run(neutral_candidates.AnswersForOneDevice, item).values()
    assert result["status"] == "error", result
    assert result["message"] == "the candidate returned 1 answers for 2 devices"
