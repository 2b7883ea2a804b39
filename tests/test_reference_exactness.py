"""The reference KFAC (kfac_ref) against the exact oracle, where theory says KFAC is exact.

Also where it says KFAC is *not* exact (so that the exactness checks can fail), and the
scaling, batching, MC and forward-only properties that hold in every case.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from kfac_conformance.cases.canonical import ALL_CASES, CANONICAL_CASES, LOSSES, Case
from kfac_conformance.oracle.blocks import exact_blocks
from kfac_ref import KroneckerFactors, compute_kfac
from kfac_ref.factors import GroupedFactors, groups_of

EXACT_TOL = 1e-10
NOT_EXACT_MIN = 1e-3
CURVATURE_OF = {"type-2": "ggn", "empirical": "empirical"}


def relative_error(approx: Tensor, exact: Tensor) -> float:
    """Relative Frobenius error; a zero exact block must be matched exactly (no 0/0 = nan)."""
    difference, scale = (approx - exact).norm().item(), exact.norm().item()
    if scale == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / scale


def bias_rows(factors: KroneckerFactors | GroupedFactors) -> int:
    """The layer's outputs: its ``B``'s size, the sum over the groups of a grouped layer."""
    return sum(group.B.shape[0] for group in groups_of(factors))


def comparable_exact(factors: KroneckerFactors | GroupedFactors, exact: Tensor) -> Tensor:
    """The exact block restricted to what KFAC models: a separate bias drops the cross terms."""
    if factors.bias != "separate":
        return exact
    num_weights = exact.shape[0] - bias_rows(factors)
    keep = torch.zeros_like(exact, dtype=torch.bool)
    keep[:num_weights, :num_weights] = True
    keep[num_weights:, num_weights:] = True
    return torch.where(keep, exact, torch.zeros_like(exact))


EXACT_ENTRIES = [
    pytest.param(case, key, id=f"{case.id}-{key}") for case in CANONICAL_CASES for key in case.exact
]


def test_every_canonical_case_claims_exact_layers():
    for case in CANONICAL_CASES:
        layers = case.make_problem().layers
        assert case.exact, f"canonical case {case.id} has no exact entries"
        for key, exact_layers in case.exact.items():
            assert exact_layers, f"{case.id}: {key} lists no layers"
            assert set(exact_layers) <= set(layers), f"{case.id}: {key} names non-layers"


# A case whose exact blocks vanish is vacuous: KFAC = 0 would pass it (a dead ReLU unit, for
# instance, zeroes whole rows; cases.py picks seeds that keep every unit alive).
MIN_BLOCK_NORM = 1e-8


@pytest.mark.parametrize("case", CANONICAL_CASES, ids=lambda case: case.id)
def test_exact_blocks_are_not_degenerate(case: Case):
    problem = case.make_problem(torch.float64)
    for key, layers in case.exact.items():
        curvature = CURVATURE_OF[key.split("/")[0]]
        exact = exact_blocks(problem.model, problem.loss_func, problem.batches, layers, curvature)
        for layer in layers:
            norm = exact[layer].norm().item()
            assert norm > MIN_BLOCK_NORM, (
                f"{case.id} {key} layer {layer}: exact block ~ 0 ({norm:.1e})"
            )


@pytest.mark.parametrize("bias", ["separate", "joint"])
@pytest.mark.parametrize(("case", "key"), EXACT_ENTRIES)
def test_reference_is_exact(case: Case, key: str, bias: str):
    fisher_type, flavour = key.split("/")
    layers = list(case.exact[key])
    problem = case.make_problem(torch.float64)
    exact = exact_blocks(
        problem.model, problem.loss_func, problem.batches, layers, CURVATURE_OF[fisher_type]
    )
    kfac = compute_kfac(
        problem.model,
        problem.loss_func,
        problem.batches,
        fisher_type=fisher_type,
        kfac_approx=flavour,
        bias=bias,
        layers=layers,
    )
    assert list(kfac) == layers
    for layer in layers:
        factors = kfac[layer]
        dense = factors.to_dense()
        assert dense.shape == exact[layer].shape
        if factors.bias == "separate":
            num_weights = dense.shape[0] - bias_rows(factors)
            assert torch.count_nonzero(dense[:num_weights, num_weights:]) == 0
            assert torch.count_nonzero(dense[num_weights:, :num_weights]) == 0
        error = relative_error(dense, comparable_exact(factors, exact[layer]))
        assert error < EXACT_TOL, (
            f"{case.id} {key} bias={bias} layer {layer}: rel. error {error:.3e}"
        )


REDUCE_CASES = [
    case
    for case in CANONICAL_CASES
    if set(case.exact_layers("type-2", "reduce")) - set(case.exact_layers("type-2", "expand"))
]


def test_there_are_reduce_cases():
    assert len(REDUCE_CASES) >= 4, [case.id for case in REDUCE_CASES]


@pytest.mark.parametrize("bias", ["separate", "joint"])
@pytest.mark.parametrize("case", REDUCE_CASES, ids=lambda case: case.id)
def test_expand_is_not_exact_before_pooling(case: Case, bias: str):
    """Layers whose shared axis is pooled before the loss are exact with reduce only."""
    before = [
        layer
        for layer in case.exact_layers("type-2", "reduce")
        if layer not in case.exact_layers("type-2", "expand")
    ]
    problem = case.make_problem(torch.float64)
    exact = exact_blocks(problem.model, problem.loss_func, problem.batches, before, "ggn")
    kfac = compute_kfac(
        problem.model,
        problem.loss_func,
        problem.batches,
        kfac_approx="expand",
        bias=bias,
        layers=before,
    )
    for layer in before:
        error = relative_error(kfac[layer].to_dense(), comparable_exact(kfac[layer], exact[layer]))
        assert error > NOT_EXACT_MIN, (
            f"{case.id} layer {layer}: expand unexpectedly exact ({error:.3e})"
        )


DEEP_LINEAR_CASES = [case for case in CANONICAL_CASES if case.id.startswith("deep-linear[")]


@pytest.mark.parametrize("flavour", ["expand", "reduce"])
@pytest.mark.parametrize("case", DEEP_LINEAR_CASES, ids=lambda case: case.id)
def test_empirical_kfac_is_not_the_empirical_fisher_on_many_data(case: Case, flavour: str):
    assert case.exact_layers("empirical", flavour) == ()
    problem = case.make_problem(torch.float64)
    exact = exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "empirical"
    )
    kfac = compute_kfac(
        problem.model,
        problem.loss_func,
        problem.batches,
        fisher_type="empirical",
        kfac_approx=flavour,
        bias="joint",
    )
    for layer in problem.layers:
        error = relative_error(kfac[layer].to_dense(), exact[layer])
        assert error > NOT_EXACT_MIN, (
            f"{case.id} layer {layer}: EF unexpectedly exact ({error:.3e})"
        )


def dense_blocks(kfac: dict[str, KroneckerFactors]) -> dict[str, Tensor]:
    return {layer: factors.to_dense() for layer, factors in kfac.items()}


SCALING_CASES = [
    "expand-deep-linear[1-axis]",
    "sequence[tanh-ce-per-position]",
    "mlp[tanh-ce-batch]",
]


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "mc", "forward-only"])
@pytest.mark.parametrize("case_id", SCALING_CASES)
def test_mean_is_sum_over_number_of_averaged_terms(case_id: str, fisher_type: str):
    case = ALL_CASES[case_id]
    assert case.reduction == "mean"
    problem = case.make_problem(torch.float64)
    summed = LOSSES[case.loss](reduction="sum")
    unreduced = LOSSES[case.loss](reduction="none")
    with torch.no_grad():
        count = sum(unreduced(problem.model(X), y).numel() for X, y in problem.batches)
    # forward-only has no loss curvature in it: B is the identity for both reductions
    factor = 1.0 if fisher_type == "forward-only" else float(count)
    kwargs = {"fisher_type": fisher_type, "mc_samples": 3, "seed": 7, "bias": "joint"}
    mean = dense_blocks(compute_kfac(problem.model, problem.loss_func, problem.batches, **kwargs))
    total = dense_blocks(compute_kfac(problem.model, summed, problem.batches, **kwargs))
    for layer in problem.layers:
        error = relative_error(mean[layer] * factor, total[layer])
        assert error < 1e-12, f"{case_id} {fisher_type} layer {layer}: {error:.3e}"


def split_in_three(batches: list[tuple[Tensor, Tensor]], with_empty: bool):
    X = torch.cat([x for x, _ in batches])
    y = torch.cat([t for _, t in batches])
    parts = list(zip(torch.tensor_split(X, 3), torch.tensor_split(y, 3), strict=True))
    if with_empty:
        parts.insert(1, (X[:0], y[:0]))
    return [(X, y)], parts


SPLIT_CASES = [
    ("deep-linear[mse-mean-3batches]", False),
    ("cnn[relu-ce]", False),
    ("sequence[sigmoid-bce-mean-pool]", True),
    ("expand-deep-linear[1-axis]", False),
]


@pytest.mark.parametrize("flavour", ["expand", "reduce"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only"])
@pytest.mark.parametrize(("case_id", "with_empty"), SPLIT_CASES)
def test_three_batches_equal_their_concatenation(
    case_id: str, with_empty: bool, fisher_type: str, flavour: str
):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    whole, parts = split_in_three(problem.batches, with_empty)
    assert len([X for X, _ in parts if X.shape[0] > 0]) == 3
    kwargs = {"fisher_type": fisher_type, "kfac_approx": flavour, "bias": "joint"}
    one = dense_blocks(compute_kfac(problem.model, problem.loss_func, whole, **kwargs))
    three = dense_blocks(compute_kfac(problem.model, problem.loss_func, parts, **kwargs))
    for layer in problem.layers:
        error = relative_error(three[layer], one[layer])
        assert error < 1e-12, f"{case_id} {fisher_type}/{flavour} layer {layer}: {error:.3e}"


# MC. With M samples per datum, B_mc - B_type2 = R/M sum_{n,m} (X_nm - E X_n) for independent
# X_nm = g g^T (g the gradient at the layer's output for a sampled label), so
# E ||B_mc - B||_F^2 = sigma^2 := (1/M) sum_n E ||X_n - E X_n||_F^2 (X_n including R), which we
# compute exactly below. By Markov's inequality on ||.||_F^2, P(||B_mc - B||_F > k sigma) <= 1/k^2:
# with k = 6 a seed fails with probability <= 1/36 whatever the distribution, and the seed is
# fixed, so the check is deterministic. M = 4000 makes k sigma < 0.1 ||B||_F here, so a scaling
# error of the MC estimate (e.g. a wrong 1/M or a wrong sampling variance, >= 25% off in
# ||B||_F) cannot pass; the test asserts that power too.
MC_SAMPLES = 4000
MC_K = 6.0
MC_MAX_RELATIVE_BOUND = 0.25


def mc_bound_check(layers, mc, type2, sigma, label):
    for layer in layers:
        assert torch.equal(mc[layer].A, type2[layer].A), f"{label} {layer}: A depends on labels"
        bound = MC_K * sigma[layer]
        reference_norm = type2[layer].B.norm().item()
        assert bound < MC_MAX_RELATIVE_BOUND * reference_norm, f"{label} {layer}: test too weak"
        error = (mc[layer].B - type2[layer].B).norm().item()
        assert error < bound, f"{label} layer {layer}: |B_mc - B| = {error:.3e} > {bound:.3e}"


def test_mc_one_datum_cross_entropy_is_close_to_type2():
    case = ALL_CASES["one-datum-mlp[tanh-ce-mean]"]
    problem = case.make_problem(torch.float64)
    (X, _), model, loss_func = problem.batches[0], problem.model, problem.loss_func
    assert X.shape[0] == 1
    type2 = compute_kfac(model, loss_func, problem.batches, bias="joint")
    mc = compute_kfac(
        model, loss_func, problem.batches, fisher_type="mc", mc_samples=MC_SAMPLES, bias="joint"
    )
    # enumerate the categorical: label c has probability p_c and gives X = KFAC-empirical's B
    with torch.no_grad():
        probs = model(X).softmax(-1)[0]
    per_class = [
        compute_kfac(
            model, loss_func, [(X, torch.tensor([c]))], fisher_type="empirical", bias="joint"
        )
        for c in range(probs.shape[0])
    ]
    sigma = {}
    for layer in problem.layers:
        expected = sum(p * kfac[layer].B for p, kfac in zip(probs, per_class, strict=True))
        # E[X] is the type-2 B: the Fisher identity, checked exactly
        assert relative_error(expected, type2[layer].B) < EXACT_TOL
        variance = sum(
            p * (kfac[layer].B - expected).norm() ** 2
            for p, kfac in zip(probs, per_class, strict=True)
        )
        sigma[layer] = math.sqrt(variance / MC_SAMPLES)
    mc_bound_check(problem.layers, mc, type2, sigma, case.id)


def test_mc_deep_linear_mse_is_close_to_type2():
    case = ALL_CASES["deep-linear[mse-sum-1batch]"]
    problem = case.make_problem(torch.float64)
    (X, y), model, loss_func = problem.batches[0], problem.model, problem.loss_func
    assert loss_func.reduction == "sum"  # R = 1, also for one datum alone
    type2 = compute_kfac(model, loss_func, problem.batches, bias="joint")
    mc = compute_kfac(
        model, loss_func, problem.batches, fisher_type="mc", mc_samples=MC_SAMPLES, bias="joint"
    )
    # MSE samples y ~ N(f, I/2), so the output gradient 2(f - y) ~ N(0, 2I) and g is Gaussian
    # with covariance C_n (datum n's type-2 B). Isserlis: Var(g_i g_j) = C_ii C_jj + C_ij^2,
    # so E||X_n - C_n||_F^2 = tr(C_n)^2 + ||C_n||_F^2.
    per_datum = [
        compute_kfac(model, loss_func, [(X[n : n + 1], y[n : n + 1])], bias="joint")
        for n in range(X.shape[0])
    ]
    sigma = {}
    for layer in problem.layers:
        covariances = [kfac[layer].B for kfac in per_datum]
        variance = sum(C.trace() ** 2 + C.norm() ** 2 for C in covariances)
        sigma[layer] = math.sqrt(variance / MC_SAMPLES)
    mc_bound_check(problem.layers, mc, type2, sigma, case.id)


@pytest.mark.parametrize("case_id", ["one-datum-mlp[sigmoid-bce-sum]", "mlp[tanh-ce-batch]"])
def test_mc_is_reproducible_and_leaves_the_global_rng_alone(case_id: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)

    def mc(seed: int) -> dict[str, Tensor]:
        kfac = compute_kfac(
            problem.model,
            problem.loss_func,
            problem.batches,
            fisher_type="mc",
            mc_samples=5,
            seed=seed,
            bias="joint",
        )
        return dense_blocks(kfac)

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first, again, other = mc(0), mc(0), mc(1)
    assert torch.equal(torch.get_rng_state(), state), "compute_kfac changed the global RNG"
    for layer in problem.layers:
        assert torch.equal(first[layer], again[layer]), f"layer {layer}: same seed, other result"
        difference = relative_error(other[layer], first[layer])
        assert difference > 1e-6, f"layer {layer}: seeds 0 and 1 agree ({difference:.3e})"


@pytest.mark.parametrize("flavour", ["expand", "reduce"])
@pytest.mark.parametrize(
    "case_id", ["conv-reduce[stride2-pad1-mean-pool]", "sequence[tanh-ce-per-position]"]
)
def test_forward_only_has_identity_B(case_id: str, flavour: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    kwargs = {"kfac_approx": flavour, "bias": "joint"}
    forward = compute_kfac(
        problem.model, problem.loss_func, problem.batches, fisher_type="forward-only", **kwargs
    )
    type2 = compute_kfac(problem.model, problem.loss_func, problem.batches, **kwargs)
    for layer in problem.layers:
        out_features = problem.model.get_submodule(layer).weight.shape[0]
        identity = torch.eye(out_features, dtype=torch.float64)
        assert torch.equal(forward[layer].B, identity), f"layer {layer}: B is not the identity"
        assert torch.equal(forward[layer].A, type2[layer].A), f"layer {layer}: A differs"
