"""Pitfalls of the loss reduction factor ``R`` in :math:`L = R\\sum_n c_n`."""

from __future__ import annotations

from torch import nn

from kfac_conformance.contract.problem import Problem, Request
from kfac_ref import losses
from kfac_ref.factors import KroneckerFactors

from .base import Mutant, reference_compute, replace

_original_reduction_factor = losses.reduction_factor


class ReductionFactorMissing(Mutant):
    """B is never multiplied by R, so reduction='mean' gives the KFAC of the summed loss.

    Killed by exactness on every mean-reduced case and by invariance/mean-vs-sum; the
    diagnosis names the factor 1/R and the one convention it equals: every block summed over
    data without R, which laplace-torch uses (``sum-nll``). A candidate that declares
    ``Conventions(curvature="sum-nll", empirical_fisher="sum-nll")`` and answers this is
    correct; declaring only one of the two still leaves the other's checks failing.
    """

    killers = (
        "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        "invariance/mean-vs-sum",
    )
    diagnosis = "off by a constant factor"

    def patches(self, request: Request):
        return [replace(losses, "reduction_factor", lambda loss_func, num_data, num_terms: 1.0)]


class ReductionFactorSquared(Mutant):
    """R is applied twice (once by the loss's mean, once more when B is normalised).

    Killed by exactness on mean-reduced cases (the block is R times too small) and by
    invariance/mean-vs-sum.
    """

    killers = (
        "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        "invariance/mean-vs-sum",
    )
    diagnosis = "off by a constant factor"

    def patches(self, request: Request):
        def squared(loss_func, num_data, num_terms):
            return _original_reduction_factor(loss_func, num_data, num_terms) ** 2

        return [replace(losses, "reduction_factor", squared)]


class MseMeanOverDataOnly(Mutant):
    """MSE with reduction='mean' normalised by the number of data N, forgetting the output
    dimension (PyTorch averages over every element, N*T).

    Killed by exactness on deep-linear[mse-mean-3batches] (factor T = 3) and by
    invariance/mean-vs-sum on multi-output MSE cases.
    """

    killers = (
        "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        "invariance/mean-vs-sum",
    )
    diagnosis = "off by a constant factor"

    def patches(self, request: Request):
        def over_data(loss_func, num_data, num_terms):
            if isinstance(loss_func, nn.MSELoss) and loss_func.reduction == "mean":
                return 1.0 / num_data
            return _original_reduction_factor(loss_func, num_data, num_terms)

        return [replace(losses, "reduction_factor", over_data)]


class ReductionPerBatch(Mutant):
    """R computed per batch (1/N_b) and the per-batch B summed, instead of one R over all data:
    mean-reduced KFAC on K batches is K times too large.

    Killed by exactness on deep-linear[mse-mean-3batches] and by invariance/batch-splitting.
    """

    killers = (
        "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        "invariance/batch-splitting",
    )
    diagnosis = "off by a constant factor"

    def compute(self, problem: Problem, request: Request):
        sizes = [X.shape[0] for X, _ in problem.batches]
        per_batch = []
        for batch in problem.batches:
            one = Problem(
                problem.model, problem.loss_func, [batch], problem.layers, problem.case_id
            )
            per_batch.append(reference_compute(one, request))
        total = sum(sizes)
        return {
            layer: KroneckerFactors(
                sum(
                    size / total * result[layer].A
                    for size, result in zip(sizes, per_batch, strict=True)
                ),
                sum(result[layer].B for result in per_batch),
                per_batch[0][layer].bias,
            )
            for layer in problem.layers
        }
