"""Properties of kfac_ref on drawn deep linear networks (kfac_conformance.cases.strategies).

Every failure prints the shrunk case and the lines that rebuild it (``hypothesis.note``), and,
under the "ci" profile, the ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import find, given, note, settings
from hypothesis import strategies as st
from zoo import KroneckerOrderSwapped

import kfac_ref
from kfac_conformance.cases.canonical import Case
from kfac_conformance.cases.strategies import deep_linear_cases, network_size, reproduction
from kfac_conformance.comparison.blocks import (
    kfac_pattern,
    relative_error,
    restrict,
    round_off_tolerance,
)
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.oracle import blocks as oracle

TOLERANCE = round_off_tolerance(torch.float64)
BIAS_MODES = st.sampled_from(["separate", "joint"])


def kfac(problem: Problem, flavour: str, bias: str, candidate=None) -> dict:
    if candidate is not None:
        return candidate.compute(problem, Request("type-2", flavour, bias=bias))
    return kfac_ref.compute_kfac(
        problem.model,
        problem.loss_func,
        problem.batches,
        kfac_approx=flavour,
        bias=bias,
        layers=problem.layers,
    )


def errors_against_oracle(case: Case, bias: str, candidate=None) -> dict[str, float]:
    """Relative error of every layer the case calls exact, keyed ``"<key>:<layer>"``."""
    problem = case.make_problem()
    exact = oracle.exact_blocks(problem.model, problem.loss_func, problem.batches, problem.layers)
    errors = {}
    for key, layers in case.exact.items():
        result = kfac(case.make_problem(), key.split("/")[1], bias, candidate)
        for layer in layers:
            target = restrict(exact[layer], kfac_pattern(result[layer]))
            errors[f"{key}:{layer}"] = relative_error(result[layer].to_dense(), target)
    return errors


def assert_same_blocks(first: dict, second: dict, scale: float, what: str, case: Case) -> None:
    for layer in first:
        error = relative_error(first[layer].to_dense(), scale * second[layer].to_dense())
        assert error <= TOLERANCE, (
            f"{what}: layer {layer!r} relative error {error:.3g} > {TOLERANCE:g}\n"
            + reproduction(case)
        )


@given(case=deep_linear_cases(), bias=BIAS_MODES)
def test_reference_equals_the_oracle_where_exact(case: Case, bias: str):
    note(reproduction(case))
    errors = errors_against_oracle(case, bias)
    assert errors, "every drawn case has exact layers"
    wrong = {key: error for key, error in errors.items() if not error <= TOLERANCE}
    assert not wrong, f"kfac_ref differs from the GGN (bias={bias!r}): {wrong}"


@given(case=deep_linear_cases(reductions=("mean",)), flavour=st.sampled_from(["expand", "reduce"]))
def test_mean_is_R_times_sum(case: Case, flavour: str):
    note(reproduction(case))
    mean_problem = case.make_problem()
    X = torch.cat([X for X, _ in mean_problem.batches])
    y = torch.cat([y for _, y in mean_problem.batches])
    with torch.no_grad():
        R_mean = oracle.reduction_factor(mean_problem.loss_func, mean_problem.model(X), y)
    sum_problem = case.make_problem()
    sum_problem.loss_func.reduction = "sum"
    with torch.no_grad():
        R = R_mean / oracle.reduction_factor(sum_problem.loss_func, sum_problem.model(X), y)
    mean = kfac(mean_problem, flavour, "separate")
    summed = kfac(sum_problem, flavour, "separate")
    assert_same_blocks(mean, summed, R, f"mean vs (R_mean / R_sum) * sum (= {R:.6g})", case)


@given(case=deep_linear_cases(), flavour=st.sampled_from(["expand", "reduce"]))
def test_batches_split_into_single_data_give_the_same_kfac(case: Case, flavour: str):
    note(reproduction(case))
    problem = case.make_problem()
    split = case.make_problem()
    split.batches = [
        (X[index : index + 1], y[index : index + 1])
        for X, y in split.batches
        for index in range(X.shape[0])
    ]
    assert_same_blocks(
        kfac(problem, flavour, "joint"), kfac(split, flavour, "joint"), 1.0, "split", case
    )


@given(case=deep_linear_cases(), data=st.data())
def test_permuting_the_data_leaves_kfac_unchanged(case: Case, data):
    note(reproduction(case))
    problem = case.make_problem()
    permuted = case.make_problem()
    X = torch.cat([X for X, _ in permuted.batches])
    y = torch.cat([y for _, y in permuted.batches])
    order = data.draw(st.permutations(range(X.shape[0])), label="order")
    permuted.batches = [(X[list(order)], y[list(order)])]
    assert_same_blocks(
        kfac(problem, "expand", "separate"),
        kfac(permuted, "expand", "separate"),
        1.0,
        "permuted",
        case,
    )


def _widths(case: Case) -> list[int]:
    return network_size(case)["widths"]


FEATURES = {
    "a width-1 layer": lambda case: 1 in _widths(case)[1:],
    "a square layer": lambda case: any(
        a == b for a, b in zip(_widths(case), _widths(case)[1:], strict=False)
    ),
    "two shared axes": lambda case: len(network_size(case)["shared_axes"]) == 2,
    "a sum pool between layers": lambda case: any(
        spec[0] == "sum" for spec in case.architecture[1:-1]
    ),
    "a mean pool at the end": lambda case: case.architecture[-1][0] == "mean",
    "layers both exact and not exact for expand": lambda case: (
        0 < len(case.exact.get("type-2/expand", ())) < len(case.exact.get("type-2/reduce", ()))
    ),
    "several batches, no bias": lambda case: (
        case.num_batches > 1 and not any(network_size(case)["biases"])
    ),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_the_strategy_reaches(feature: str):
    found = find(
        deep_linear_cases(),
        FEATURES[feature],
        settings=settings(derandomize=True, max_examples=500, database=None),
    )
    assert FEATURES[feature](found)


def test_hypothesis_finds_and_shrinks_a_planted_bug():
    """The Kronecker order swap is invisible on 1x1 layers without bias and on non-square ones
    (result validation rejects it there); hypothesis must find a case where it shows and shrink
    it to one small square layer."""
    mutant = KroneckerOrderSwapped()

    def exposes_the_bug(case: Case) -> bool:
        return any(
            not error <= TOLERANCE
            for error in errors_against_oracle(case, "separate", mutant).values()
        )

    shrunk = find(
        deep_linear_cases(),
        exposes_the_bug,
        settings=settings(derandomize=True, max_examples=300, database=None, deadline=None),
    )
    size = network_size(shrunk)
    print("shrunk case:", size, "\n" + reproduction(shrunk))
    assert exposes_the_bug(shrunk)
    assert size["depth"] == 1, size
    assert size["widths"][0] == size["widths"][1] <= 2, size
    assert size["shared_axes"] == [] and size["batches"] == 1 and size["data_per_batch"] == 1, size
