"""Pitfalls of the curvature itself: the loss Hessian factor and the Fisher type."""

from __future__ import annotations

import torch
from torch import nn

from kfac_conformance.contract.problem import Request
from kfac_ref import compute, losses

from .base import Mutant, replace, rules_replaced

_original_hessian_sqrt = losses.hessian_sqrt
_original_vectors = compute.backpropagated_vectors


class CeSqrtWithoutRankOne(Mutant):
    """Cross-entropy Hessian factored as diag(sqrt p), without the rank-one correction
    -p sqrt(p)^T: S S^T is diag(p) instead of diag(p) - p p^T.

    Killed by exactness on one-datum cross-entropy cases.
    """

    killers = ("exactness/type-2-expand[one-datum-mlp[tanh-ce-sum]]",)

    def patches(self, request: Request):
        def diagonal_only(loss_func, terms):
            if isinstance(loss_func, nn.CrossEntropyLoss):
                return torch.diag_embed(terms.softmax(dim=-1).sqrt())
            return _original_hessian_sqrt(loss_func, terms)

        return [replace(losses, "hessian_sqrt", diagonal_only)]


class Type2AnswersEmpirical(Mutant):
    """fisher_type='type-2' answered with the gradients of the loss at the true labels (a
    backward pass of the loss): the empirical Fisher, not the GGN.

    Killed by exactness on one datum, where the diagnosis names the empirical Fisher block.
    """

    killers = ("exactness/type-2-expand[one-datum-mlp[tanh-mse-mean]]",)
    diagnosis = "equals the empirical Fisher block instead"

    def patches(self, request: Request):
        def empirical(loss_func, output, labels, fisher_type, mc_samples, generator):
            if fisher_type == "type-2":
                fisher_type = "empirical"
            return _original_vectors(loss_func, output, labels, fisher_type, mc_samples, generator)

        return [replace(compute, "backpropagated_vectors", empirical)]


class EmpiricalFromBatchGradient(Mutant):
    """Empirical KFAC from the gradient of the whole batch (per-datum output gradients summed
    before the outer product) instead of per-datum gradients.

    Identical on one datum, so exactness cannot see it; killed by agreement/empirical on the
    many-data agreement cases.
    """

    killers = ("agreement/empirical[mlp[tanh-ce-batch]]",)

    def patches(self, request: Request):
        if request.fisher_type != "empirical":
            return []
        return [
            rules_replaced(lambda key, rule: rule._replace(grad_sum=_batch_summed(rule.grad_sum)))
        ]


def _batch_summed(grad_sum):
    # grad positions are (V, N, S, d_out): summing over N forms the batch gradient
    return lambda grad_positions: grad_sum(grad_positions.sum(dim=1, keepdim=True))
