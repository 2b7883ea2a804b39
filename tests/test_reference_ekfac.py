"""The reference EKFAC: its corrected eigenvalues are the exact curvature's in KFAC's basis."""

from __future__ import annotations

import pytest
import torch

import kfac_ref
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.oracle import blocks as oracle
from kfac_ref.factors import EKFACFactors, joint_order

TOLERANCE = 1e-10  # float64 round-off on these small problems
CURVATURE = {"type-2": "ggn", "empirical": "empirical", "mc": "mc"}
CASES = [
    "mlp[tanh-ce-batch]",
    "cnn[relu-ce]",
    "sequence[tanh-ce-per-position]",
    "sequence[sigmoid-bce-mean-pool]",
    "cnn[tanh-mse-feature-map]",
]


def _problem(case_id: str):
    return ALL_CASES[case_id].make_problem()


def _arguments(problem, fisher_type, flavour, bias):
    return dict(
        fisher_type=fisher_type,
        kfac_approx=flavour,
        bias=bias,
        layers=problem.layers,
        mc_samples=3,
        seed=5,
    )


def _exact(problem, fisher_type):
    labels = None
    if fisher_type == "mc":
        labels = kfac_ref.sampled_labels(
            problem.model, problem.loss_func, problem.batches, mc_samples=3, seed=5
        )
    return oracle.exact_blocks(
        problem.model,
        problem.loss_func,
        problem.batches,
        problem.layers,
        CURVATURE[fisher_type],
        sampled_labels=labels,
    )


def basis_directions(factors: EKFACFactors) -> torch.Tensor:
    """Columns ``u`` over ``[weight.flatten(), bias]`` with ``block = Σ s_u u uᵀ``."""
    Q = torch.kron(factors.QB, factors.QA)
    if factors.bias == "separate":
        return torch.block_diag(Q, factors.QB)
    if factors.bias == "joint":
        return Q[joint_order(factors.QB.shape[0], factors.QA.shape[0])]
    return Q


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case_id", CASES)
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "mc"])
@pytest.mark.parametrize(("flavour", "bias"), [("expand", "separate"), ("reduce", "joint")])
def test_ekfac_is_the_projection_of_the_exact_block_onto_kfacs_eigenbasis(
    case_id, fisher_type, flavour, bias
):
    problem = _problem(case_id)
    arguments = _arguments(problem, fisher_type, flavour, bias)
    ekfac = kfac_ref.compute_ekfac(problem.model, problem.loss_func, problem.batches, **arguments)
    kfac = kfac_ref.compute_kfac(problem.model, problem.loss_func, problem.batches, **arguments)
    exact = _exact(problem, fisher_type)
    for layer in problem.layers:
        factors = ekfac[layer]
        U = basis_directions(factors)
        identity = torch.eye(U.shape[0], dtype=U.dtype)
        assert _relative(U.T @ U, identity) <= TOLERANCE
        # the basis is KFAC's: it diagonalises KFAC's block
        rotated_kfac = U.T @ kfac[layer].to_dense() @ U
        off_diagonal = rotated_kfac - torch.diag(torch.diagonal(rotated_kfac))
        assert off_diagonal.norm() <= TOLERANCE * rotated_kfac.norm()
        # the eigenvalues are the exact block's second moments in that basis: <E - F, u uᵀ> = 0
        dense = factors.to_dense()
        assert (
            _relative(torch.diagonal(U.T @ dense @ U), torch.diagonal(U.T @ exact[layer] @ U))
            <= TOLERANCE
        )
        pattern = torch.ones_like(dense, dtype=torch.bool)
        if bias == "separate":
            weight = factors.S.numel()
            pattern[:weight, weight:] = pattern[weight:, :weight] = False
        target = torch.where(pattern, exact[layer], 0.0)
        assert (dense - target).norm() <= (kfac[layer].to_dense() - target).norm() + 1e-12


@pytest.mark.parametrize("case_id", ["one-datum-mlp[tanh-ce-sum]", "one-datum-mlp[relu-mse-mean]"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
def test_ekfac_equals_kfac_and_the_exact_block_on_one_datum(case_id, fisher_type):
    problem = _problem(case_id)
    arguments = _arguments(problem, fisher_type, "expand", "joint")
    ekfac = kfac_ref.compute_ekfac(problem.model, problem.loss_func, problem.batches, **arguments)
    kfac = kfac_ref.compute_kfac(problem.model, problem.loss_func, problem.batches, **arguments)
    exact = _exact(problem, fisher_type)
    for layer in problem.layers:
        assert _relative(ekfac[layer].to_dense(), exact[layer]) <= TOLERANCE
        assert _relative(ekfac[layer].to_dense(), kfac[layer].to_dense()) <= TOLERANCE


def test_sampled_labels_are_the_labels_mc_kfac_draws():
    """On one datum MC KFAC is exactly the MC Fisher of its own labels (B is the labels' sum of
    outer products, A the datum's input), so the exposed labels must be the drawn ones."""
    problem = _problem("one-datum-mlp[tanh-ce-sum]")
    labels = kfac_ref.sampled_labels(
        problem.model, problem.loss_func, problem.batches, mc_samples=4, seed=9
    )
    X, y = problem.batches[0]
    assert [tuple(label.shape) for label in labels] == [(4, *y.shape)]
    kfac = kfac_ref.compute_kfac(
        problem.model,
        problem.loss_func,
        problem.batches,
        fisher_type="mc",
        mc_samples=4,
        seed=9,
        bias="joint",
    )
    exact = oracle.exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, "mc", labels
    )
    other = kfac_ref.sampled_labels(
        problem.model, problem.loss_func, problem.batches, mc_samples=4, seed=10
    )
    for layer in problem.layers:
        assert _relative(kfac[layer].to_dense(), exact[layer]) <= TOLERANCE
    assert not torch.equal(labels[0], other[0])


@pytest.mark.parametrize("loss_case", ["mlp[tanh-ce-batch]", "sequence[sigmoid-bce-mean-pool]"])
def test_sampled_labels_have_the_layout_of_y(loss_case):
    problem = _problem(loss_case)
    labels = kfac_ref.sampled_labels(
        problem.model, problem.loss_func, problem.batches, mc_samples=2, seed=0
    )
    assert len(labels) == len(problem.batches)
    for label, (_, y) in zip(labels, problem.batches, strict=True):
        assert label.shape == (2, *y.shape) and label.dtype == y.dtype


def test_ekfac_accepts_one_shot_iterables_and_batches_as_one_data_set():
    problem = _problem("mlp[tanh-ce-batch]")
    arguments = _arguments(problem, "type-2", "expand", "separate")
    listed = kfac_ref.compute_ekfac(problem.model, problem.loss_func, problem.batches, **arguments)
    once = kfac_ref.compute_ekfac(
        problem.model, problem.loss_func, iter(problem.batches), **arguments
    )
    X = torch.cat([X for X, _ in problem.batches])
    y = torch.cat([y for _, y in problem.batches])
    joined = kfac_ref.compute_ekfac(problem.model, problem.loss_func, [(X, y)], **arguments)
    for layer in problem.layers:
        assert torch.equal(listed[layer].S, once[layer].S)
        assert _relative(joined[layer].to_dense(), listed[layer].to_dense()) <= TOLERANCE


def test_forward_only_has_no_ekfac():
    problem = _problem("mlp[tanh-ce-batch]")
    with pytest.raises(ValueError, match="EKFAC needs a loss curvature"):
        kfac_ref.compute_ekfac(
            problem.model, problem.loss_func, problem.batches, fisher_type="forward-only"
        )


def test_ekfac_factors_validate():
    eye = torch.eye(2)
    with pytest.raises(ValueError, match="S must be a tensor of shape"):
        EKFACFactors(eye, torch.eye(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="S_bias is required"):
        EKFACFactors(eye, eye, torch.ones(2, 2), "separate")
