"""The third-party adapters: real assertions where the library is installed, clean skips elsewhere.

On one datum, type-2 KFAC is the exact GGN block (KFAC tutorial, arXiv 2507.05127), so each
adapter that claims type-2 must reproduce the oracle there, in its own bias mode.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

from kfac_conformance import NotSupported
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.ekfac.factors import corrected_eigenvalues, flat_eigenvalues
from kfac_conformance.comparison.blocks import kfac_pattern, relative_error, restrict
from kfac_conformance.contract import conventions
from kfac_conformance.contract.loading import load_candidate, registered_candidates
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import Session, reference_compute
from kfac_conformance.oracle import blocks as oracle
from kfac_ref.factors import EKFACFactors

LIBRARIES = {
    "curvlinops": "curvlinops",
    "backpack-kfac": "backpack",
    "backpack-kflr": "backpack",
    "backpack-kfra": "backpack",
    "asdl": "asdl",
    "nngeometry": "nngeometry",
    "kronfluence-kfac": "kronfluence",
    "kronfluence-ekfac": "kronfluence",
    "laplace-curvlinops": "laplace",
    "laplace-asdl": "laplace",
    "laplace-backpack": "laplace",
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
    "laplace-curvlinops": ["one-datum-mlp[tanh-mse-sum]", "one-datum-mlp[relu-ce-mean]"],
    "laplace-asdl": ["one-datum-mlp[tanh-mse-mean]", "one-datum-mlp[relu-ce-sum]"],
    "laplace-backpack": ["one-datum-mlp[sigmoid-mse-sum]", "one-datum-mlp[tanh-ce-mean]"],
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
    result = Session(candidate).call(problem, request)  # in the tutorial's scale
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


@pytest.mark.parametrize("name", ["backpack-kflr", "asdl", "nngeometry", "laplace-backpack"])
def test_shared_axes_on_linear_are_refused(name):
    candidate = load(name)
    problem = ALL_CASES["expand-deep-linear[1-axis]"].make_problem()
    bias = sorted(candidate.capabilities.bias_modes)[0]
    with pytest.raises(NotImplementedError, match="unsupported by"):
        candidate.compute(problem, Request("type-2", "expand", bias=bias))


# kronfluence has no type-2 Fisher; its empirical Fisher of one datum is exact. CE and BCE
# only: their per-datum criterion does not depend on how MSE's ½ is split.
EMPIRICAL_CASES = ["one-datum-mlp[relu-ce-mean]", "one-datum-mlp[sigmoid-bce-sum]"]


def tutorial_scale(candidate, problem, request) -> float:
    """``s`` with the candidate's block ``= s *`` the tutorial's (its declared conventions)."""
    quantities = problem.scale_quantities()
    return conventions.scale(candidate.capabilities.conventions, request.fisher_type, quantities)


@pytest.mark.parametrize("case_id", EMPIRICAL_CASES)
def test_kronfluence_kfac_empirical_equals_ef_on_one_datum(case_id):
    candidate = load("kronfluence-kfac")
    problem = ALL_CASES[case_id].make_problem()
    request = Request("empirical", "expand", bias="joint")
    result = Session(candidate).call(problem, request)
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "empirical"
    )
    for layer in problem.layers:
        assert relative_error(result[layer].to_dense(), exact[layer]) < 1e-10, (case_id, layer)


def row_major_joint(block: torch.Tensor, factors) -> torch.Tensor:
    """A ``[W.flatten(), b]``-ordered block reordered to the row-major ``[W | b]`` of ``factors``
    (the inverse of the reordering in ``to_dense``)."""
    if factors.bias != "joint":
        return block
    d_out, d_in_plus_one = factors.QB.shape[0], factors.QA.shape[0]
    index = torch.arange(d_out * d_in_plus_one).reshape(d_out, -1)
    order = torch.cat([index[:, :-1].flatten(), index[:, -1]])
    inverse = torch.argsort(order)
    return block[inverse][:, inverse]


@pytest.mark.parametrize("case_id", ["mlp[tanh-ce-batch]", "cnn[relu-ce]"])
def test_kronfluence_ekfac_is_the_corrected_kfac_of_the_exact_empirical_fisher(case_id):
    """George et al. 2018: ``S = diag(Q^T F Q)`` with ``Q = Q_B ⊗ Q_A`` the eigenvectors of
    KFAC's factors and ``F`` the exact empirical Fisher block (deterministic labels), on
    problems where KFAC itself is not exact."""
    ekfac, kfac = load("kronfluence-ekfac"), load("kronfluence-kfac")
    request = Request("empirical", "expand", bias="joint", approximation="ekfac")
    problem = ALL_CASES[case_id].make_problem()
    result = ekfac.compute(problem, request)
    kfac_result = Session(kfac).call(
        ALL_CASES[case_id].make_problem(), replace(request, approximation="kfac")
    )
    scale = tutorial_scale(ekfac, problem, request)
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "empirical"
    )
    for layer in problem.layers:
        factors = result[layer]
        assert isinstance(factors, EKFACFactors) and factors.S.dtype == torch.float64
        for Q in (factors.QA, factors.QB):
            assert torch.allclose(Q.T @ Q, torch.eye(Q.shape[0], dtype=Q.dtype), atol=1e-12)
        # the basis is KFAC's: it diagonalises the KFAC candidate's own factors
        A, B = kfac_result[layer].A, kfac_result[layer].B
        for Q, factor in ((factors.QA, A), (factors.QB, B)):
            rotated = Q.T @ factor @ Q
            off_diagonal = rotated - torch.diag(torch.diagonal(rotated))
            assert off_diagonal.norm() < 1e-10 * factor.norm(), (case_id, layer)
        F = scale * row_major_joint(exact[layer], factors)
        basis = torch.kron(factors.QB, factors.QA)
        S_exact = torch.diagonal(basis.T @ F @ basis).reshape(factors.S.shape)
        assert relative_error(factors.S, S_exact) < 1e-10, (case_id, layer)
        # hence Frobenius-nearest in that basis, and no farther from F than KFAC
        kfac_dense = row_major_joint(scale * kfac_result[layer].to_dense(), factors)
        ekfac_dense = row_major_joint(factors.to_dense(), factors)
        assert (ekfac_dense - F).norm() <= (kfac_dense - F).norm() * (1 + 1e-12)
        assert relative_error(ekfac_dense, F) > 1e-3  # a case where EKFAC is not exact


def test_kronfluence_draws_labels_from_its_seed_only():
    candidate = load("kronfluence-kfac")
    request = Request("mc", "expand", mc_samples=2, seed=3, bias="joint")
    case = ALL_CASES["mlp[tanh-ce-batch]"]
    first = Session(candidate).call(case.make_problem(), request)
    torch.manual_seed(99)
    second = Session(candidate).call(case.make_problem(), request)
    other = Session(candidate).call(case.make_problem(), replace(request, seed=4))
    for layer, factors in first.items():
        assert torch.equal(factors.to_dense(), second[layer].to_dense())
        assert not torch.equal(factors.to_dense(), other[layer].to_dense())


@pytest.mark.parametrize("name", ["laplace-curvlinops", "laplace-asdl"])
def test_laplace_empirical_fisher_on_one_datum_ce(name):
    candidate = load(name)
    problem = ALL_CASES["one-datum-mlp[tanh-ce-sum]"].make_problem()
    result = Session(candidate).call(problem, Request("empirical", "expand", bias="separate"))
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "empirical"
    )
    for layer in problem.layers:
        target = restrict(exact[layer], kfac_pattern(result[layer]))
        assert relative_error(result[layer].to_dense(), target) < 1e-10, (name, layer)


def test_kronfluence_averages_g_over_positions_too():
    """docs/findings.md K1: on a Linear layer with S shared positions kronfluence's block is
    1/S of KFAC-expand's (kfac_ref's empirical KFAC-expand; CE, whose split is fixed)."""
    candidate = load("kronfluence-kfac")
    case = ALL_CASES["sequence[tanh-ce-per-position]"]
    request = Request("empirical", "expand", bias="joint")
    result = Session(candidate).call(case.make_problem(), request)
    reference = reference_compute(case.make_problem(), request)
    positions = case.make_problem().batches[0][0].shape[1]
    for layer, factors in result.items():
        expand = reference[layer].to_dense()
        assert relative_error(positions * factors.to_dense(), expand) < 1e-10, layer


# cases with several data where EKFAC differs from KFAC (nngeometry's CE fails in float64, N1)
EKFAC_CASES = {
    "curvlinops-ekfac": ["mlp[tanh-ce-batch]", "cnn[relu-ce]"],
    "nngeometry-ekfac": ["deep-linear[mse-mean-3batches]", "cnn[tanh-mse-feature-map]"],
}


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
    scale = tutorial_scale(candidate, problem, request)
    for layer in problem.layers:
        expected = corrected_eigenvalues(result[layer], exact[layer])
        observed = flat_eigenvalues(result[layer]) / scale
        assert relative_error(observed, expected) < 1e-10, (name, case_id, layer)


def _one_conv_problem(dilation: int, loss_func: nn.Module, labels: torch.Tensor) -> Problem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1, dilation=dilation)).double()
    X = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    return Problem(model, loss_func, [(X, labels)], ["0"], "one-conv")


@pytest.mark.parametrize(
    ("name", "problem", "reason"),
    [
        (
            "asdl",
            lambda: _one_conv_problem(
                2, nn.MSELoss(), torch.zeros(2, 2, 3, 3, dtype=torch.float64)
            ),
            "dilated Conv2d layers ['0']",
        ),
        (
            "nngeometry",
            lambda: _one_conv_problem(
                1, nn.CrossEntropyLoss(), torch.zeros(2, 3, 3, dtype=torch.long)
            ),
            "only (N, C) outputs are supported",
        ),
    ],
)
def test_inputs_the_fuzzer_found_crashing_are_refused(name, problem, reason):
    """A dilated convolution crashed inside ASDL, CE on (N, C, H, W) logits inside nngeometry."""
    candidate = load(name)
    with pytest.raises(NotSupported, match=re.escape(reason)):
        candidate.compute(
            problem(),
            Request("type-2", "expand", bias=sorted(candidate.capabilities.bias_modes)[0]),
        )


@pytest.mark.parametrize("approximation", ["kfac", "ekfac"])
def test_nngeometry_conv1d_is_the_reference_kfac_expand(approximation):
    """Strided, padded and dilated Conv1d layers with MSE on the feature map, in float64
    (nngeometry's "regression" works there, unlike classif_logits, N1): nngeometry's patches
    are in weight[o].flatten() order, so its blocks are kfac_ref's, in the suite's scale."""
    candidate = load("nngeometry" if approximation == "kfac" else "nngeometry-ekfac")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Conv1d(3, 2, 2, dilation=2)
    ).double()
    X = torch.randn(4, 2, 9, dtype=torch.float64)
    with torch.no_grad():
        y = torch.randn_like(model(X))
    problem = Problem(model, nn.MSELoss(), [(X, y)], ["0", "2"], "conv1d")
    request = Request("type-2", "expand", bias="joint", approximation=approximation)
    assert candidate.capabilities.unsupported(problem, request) is None
    result = Session(candidate).call(problem, request)
    expected = reference_compute(problem, request)
    for layer in problem.layers:
        assert relative_error(result[layer].to_dense(), expected[layer].to_dense()) < 1e-10


def test_asdl_embedding_with_one_index_is_the_ggn_of_one_datum():
    """One datum with one index, (1, 1): ASDL's Embedding KFAC is the exact GGN block once the
    adapter has swapped ASDL's factors into kron(B, A) over weight.flatten() (a weight of
    shape (5, 3): the unswapped product is a different matrix)."""
    candidate = load("asdl")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(3, 2)).double()
    X = torch.tensor([[3]])
    problem = Problem(
        model, nn.MSELoss(), [(X, torch.randn(1, 2, dtype=torch.float64))], ["0"], "e"
    )
    request = Request("type-2", "expand", bias="separate")
    # called directly: the harness counts the (1, 1) indices as a shared axis, not claimed
    result = candidate.compute(problem, request)
    scale = tutorial_scale(candidate, problem, request)
    exact = oracle.exact_blocks(problem.model, problem.loss_func, problem.batches, ["0"], "ggn")
    assert relative_error(result["0"].to_dense() / scale, exact["0"]) < 1e-10


def test_asdl_embedding_on_one_index_per_datum_is_refused():
    """(N,) indices make ASDL's cov_kron_A raise (torch.bincount of a 0-d tensor)."""
    candidate = load("asdl")
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2)).double()
    X = torch.tensor([0, 3, 3])
    problem = Problem(
        model, nn.MSELoss(), [(X, torch.zeros(3, 2, dtype=torch.float64))], ["0"], "e"
    )
    with pytest.raises(NotSupported, match=re.escape("Embedding layers ['0'] on (N,) indices")):
        candidate.compute(problem, Request("type-2", "expand", bias="separate"))
