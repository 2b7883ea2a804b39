"""The third-party adapters: real assertions where the library is installed, clean skips elsewhere.

On one datum, type-2 KFAC is the exact GGN block (KFAC tutorial, arXiv 2507.05127), so each
adapter that claims type-2 must reproduce the oracle there, in its own bias mode.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from kfac_conformance import conventions, oracle
from kfac_conformance.cases import ALL_CASES
from kfac_conformance.checks.ekfac import corrected_eigenvalues, flat_eigenvalues
from kfac_conformance.compare import kfac_pattern, relative_error, restrict
from kfac_conformance.loading import load_candidate, registered_candidates
from kfac_conformance.problem import Problem, Request

LIBRARIES = {
    "curvlinops": "curvlinops",
    "backpack-kfac": "backpack",
    "backpack-kflr": "backpack",
    "backpack-kfra": "backpack",
    "asdl": "asdl",
    "nngeometry": "nngeometry",
    "curvlinops-ekfac": "curvlinops",
    "nngeometry-ekfac": "nngeometry",
}

# one-datum cases each candidate can run (KFRA and nngeometry's classif_logits fail in float64
# with MSE and CE respectively, see docs/findings.md B3 and N1)
TYPE2_CASES = {
    "curvlinops": ["one-datum-mlp[tanh-mse-sum]", "one-datum-mlp[relu-ce-mean]"],
    "backpack-kflr": ["one-datum-mlp[tanh-mse-sum]", "one-datum-mlp[relu-ce-mean]"],
    "backpack-kfra": ["one-datum-mlp[sigmoid-ce-sum]"],
    "asdl": ["one-datum-mlp[tanh-mse-mean]", "one-datum-mlp[relu-ce-sum]"],
    "nngeometry": ["one-datum-mlp[tanh-mse-mean]", "one-datum-mlp[sigmoid-bce-sum]"],
}


def load(name: str):
    pytest.importorskip(LIBRARIES[name])
    return load_candidate(name)


@pytest.mark.parametrize("name", sorted(LIBRARIES))
def test_every_adapter_is_registered_and_imports_without_its_library(name):
    entry_point = registered_candidates()[name]
    module, _, attr = entry_point.value.partition(":")
    assert getattr(importlib.import_module(module), attr).name == name


@pytest.mark.parametrize(
    ("name", "case_id"), [(name, case) for name, cases in TYPE2_CASES.items() for case in cases]
)
def test_type2_equals_ggn_on_one_datum(name, case_id):
    candidate = load(name)
    problem = ALL_CASES[case_id].make_problem()
    bias = sorted(candidate.capabilities.bias_modes)[0]
    request = Request("type-2", "expand", bias=bias)
    assert candidate.capabilities.unsupported(problem, request) is None
    result = candidate.compute(problem, request)
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "ggn"
    )
    for layer in problem.layers:
        factors = result[layer]
        assert factors.A.dtype == torch.float64 and not factors.A.requires_grad
        target = restrict(exact[layer], kfac_pattern(factors))
        assert relative_error(factors.to_dense(), target) < 1e-10, (name, case_id, layer)


def test_backpack_kfac_is_seeded_and_keeps_the_global_rng():
    candidate = load("backpack-kfac")
    request = Request("mc", "expand", mc_samples=3, seed=5, bias="separate")
    case = ALL_CASES["mlp[tanh-ce-batch]"]
    problems = [case.make_problem(), case.make_problem()]  # building a model draws from the RNG
    state = torch.get_rng_state()
    first = candidate.compute(problems[0], request)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    second = candidate.compute(problems[1], request)
    for layer, factors in first.items():
        assert torch.equal(factors.to_dense(), second[layer].to_dense())


@pytest.mark.parametrize("name", ["backpack-kflr", "asdl", "nngeometry"])
def test_shared_axes_on_linear_are_refused(name):
    candidate = load(name)
    problem = ALL_CASES["expand-deep-linear[1-axis]"].make_problem()
    bias = sorted(candidate.capabilities.bias_modes)[0]
    with pytest.raises(NotImplementedError, match="unsupported by"):
        candidate.compute(problem, Request("type-2", "expand", bias=bias))


# cases with several data where EKFAC differs from KFAC (nngeometry's CE fails in float64, N1)
EKFAC_CASES = {
    "curvlinops-ekfac": ["mlp[tanh-ce-batch]", "cnn[relu-ce]"],
    "nngeometry-ekfac": ["deep-linear[mse-mean-3batches]", "cnn[tanh-mse-feature-map]"],
}


def declared_scale(candidate, problem: Problem, fisher_type: str) -> float:
    """The factor the candidate's declared conventions put on the tutorial's block."""
    X = torch.cat([X for X, _ in problem.batches])
    with torch.no_grad():
        output = problem.model(X)
    loss = type(problem.loss_func).__name__
    terms = output.shape[2:].numel() if loss == "CrossEntropyLoss" else output[0].numel()
    R = conventions.reduction_factor(loss, problem.loss_func.reduction, X.shape[0], terms)
    quantities = {"N": X.shape[0], "R": R, "loss": loss}
    return conventions.scale(candidate.capabilities.conventions, fisher_type, quantities)


@pytest.mark.parametrize(
    ("name", "case_id"), [(name, case) for name, cases in EKFAC_CASES.items() for case in cases]
)
def test_ekfac_correction_is_the_exact_ggn_in_the_adapters_basis(name, case_id):
    """S = diag(QᵀGQ) (ekfac/correction-exact-type-2), once the declared scale is divided out."""
    candidate = load(name)
    problem = ALL_CASES[case_id].make_problem()
    bias = sorted(candidate.capabilities.bias_modes)[0]
    request = Request("type-2", "expand", bias=bias, approximation="ekfac")
    assert candidate.capabilities.unsupported(problem, request) is None
    result = candidate.compute(problem, request)
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "ggn"
    )
    scale = declared_scale(candidate, problem, "type-2")
    for layer in problem.layers:
        expected = corrected_eigenvalues(result[layer], exact[layer])
        observed = flat_eigenvalues(result[layer]) / scale
        assert relative_error(observed, expected) < 1e-10, (name, case_id, layer)
