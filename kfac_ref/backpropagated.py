r"""The vectors that are backpropagated through the network, one set per Fisher type.

Each vector has the shape of the network's output. For the backpropagated vector ``v`` the
gradient at a layer's output is :math:`g = J_z f^\top v`, and KFAC's ``B`` is
:math:`R \sum_n \sum_v g_{n,v} g_{n,v}^\top` (up to the flavour's treatment of shared axes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kfac_ref import losses

FISHER_TYPES: tuple[str, ...] = ("type-2", "mc", "empirical", "forward-only")


def backpropagated_vectors(
    loss_func: nn.Module,
    output: Tensor,
    labels: Tensor,
    fisher_type: str,
    mc_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Vectors ``(V, *output.shape)`` whose outer products sum to the loss curvature.

    - ``"type-2"``: the columns of :math:`S_{n,t}` with :math:`\\nabla^2 \\ell_{n,t} = S S^\\top`,
      one vector per (term, column), so :math:`\\sum_v v v^\\top = \\nabla^2_f c_n` exactly.
    - ``"mc"``: :math:`\\nabla_f c_n(\\hat y_m) / \\sqrt{M}` for ``M`` sampled labels
      :math:`\\hat y_m`; their outer products average to the Hessian in expectation.
    - ``"empirical"``: :math:`\\nabla_f c_n(y_n)` for the true labels.
    - ``"forward-only"``: none (``B`` is the identity).
    """
    output = output.detach()
    terms = losses.to_terms(loss_func, output)
    if fisher_type == "type-2":
        sqrt = losses.hessian_sqrt(loss_func, terms)  # (N, T, C, C)
        num_terms, num_columns = sqrt.shape[1], sqrt.shape[-1]
        one_term = torch.eye(num_terms, dtype=terms.dtype, device=terms.device)
        # vector (t, c) is column c of S[n, t] placed at term t and zero at all other terms
        vectors = torch.einsum("ts,nsjc->tcnsj", one_term, sqrt)
        vectors = vectors.reshape(num_terms * num_columns, *terms.shape)
    elif fisher_type == "mc":
        sampled = losses.sample_labels(loss_func, terms, mc_samples, generator)
        vectors = losses.criterion_gradient(loss_func, terms, sampled) / math.sqrt(mc_samples)
    elif fisher_type == "empirical":
        true_labels = losses.labels_to_terms(loss_func, labels)
        vectors = losses.criterion_gradient(loss_func, terms, true_labels).unsqueeze(0)
    elif fisher_type == "forward-only":
        vectors = terms.new_zeros((0, *terms.shape))
    else:
        raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
    return losses.from_terms(loss_func, vectors, output.shape)
