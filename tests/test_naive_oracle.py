"""The benchmark's coordinate-by-coordinate GGN block equals the oracle's on small cases.

The speed-up the benchmark reports is only meaningful at equal results; both sides are
float64, so they must agree to round-off.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.oracle.blocks import exact_blocks

NAIVE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "naive_oracle.py"
_spec = importlib.util.spec_from_file_location("naive_oracle", NAIVE_PATH)
naive_oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive_oracle)

ROUND_OFF = 1e-10

# one case per loss, with several batches, shared axes, a pooled output and a convolution
CASE_IDS = [
    "one-datum-mlp[tanh-ce-mean]",
    "mlp[tanh-ce-batch]",
    "deep-linear[mse-mean-3batches]",
    "expand-deep-linear[2-axes]",
    "sequence[sigmoid-bce-mean-pool]",
    "conv-expand[1x1-per-pixel-mse]",
]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    scale = exact.norm().item()
    assert scale > 0, "comparison against a zero block is vacuous"
    return (approx - exact).norm().item() / scale


@pytest.mark.parametrize("method", naive_oracle.METHODS)
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_naive_block_equals_oracle(case_id, method):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    exact = exact_blocks(problem.model, problem.loss_func, problem.batches, problem.layers)
    for layer in problem.layers:
        naive = naive_oracle.naive_ggn_block(
            problem.model, problem.loss_func, problem.batches, layer, method=method
        )
        assert naive.shape == exact[layer].shape
        assert relative_error(naive, exact[layer]) < ROUND_OFF, layer


def test_selected_columns_are_those_of_the_full_block():
    problem = ALL_CASES["deep-linear[mse-mean-3batches]"].make_problem(torch.float64)
    layer = problem.layers[0]
    full = naive_oracle.naive_ggn_block(problem.model, problem.loss_func, problem.batches, layer)
    columns = [0, 7, full.shape[1] - 1]
    some = naive_oracle.naive_ggn_block(
        problem.model, problem.loss_func, problem.batches, layer, columns
    )
    assert relative_error(some, full[:, columns]) < ROUND_OFF


def test_unknown_method_is_refused():
    problem = ALL_CASES["deep-linear[mse-mean-3batches]"].make_problem(torch.float64)
    with pytest.raises(ValueError, match="method must be one of"):
        naive_oracle.naive_ggn_block(
            problem.model, problem.loss_func, problem.batches, problem.layers[0], method="fast"
        )


def test_columns_outside_the_layer_are_refused():
    problem = ALL_CASES["deep-linear[mse-mean-3batches]"].make_problem(torch.float64)
    layer = problem.layers[0]
    size = sum(p.numel() for p in problem.model.get_submodule(layer).parameters())
    with pytest.raises(ValueError, match="columns must lie in"):
        naive_oracle.naive_ggn_block(
            problem.model, problem.loss_func, problem.batches, layer, [size]
        )
