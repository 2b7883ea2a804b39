r"""EKFAC (George et al. 2018): KFAC's Kronecker eigenbasis with eigenvalues corrected per datum.

Write :math:`A = Q_A\Lambda_AQ_A^\top` and :math:`B = Q_B\Lambda_BQ_B^\top` for KFAC's
factors (:func:`kfac_ref.compute_kfac`, same Fisher type, flavour and bias mode) and
:math:`Q = Q_B\otimes Q_A`. KFAC is :math:`Q(\Lambda_B\otimes\Lambda_A)Q^\top`; EKFAC keeps
``Q`` and replaces the eigenvalues by the second moments of the per-datum gradients in that
basis,

.. math::  S = R\sum_n\sum_v \big(Q_B^\top G_{n,v}\,Q_A\big)^{\odot 2},
           \qquad G_{n,v} = \sum_s g_{n,s,v}\,a_{n,s}^\top,

where :math:`a_{n,s}` is the layer's input at shared position ``s`` of datum ``n`` (with a
joint bias followed by a one), :math:`g_{n,s,v}` the gradient of backpropagated vector ``v``
(:mod:`kfac_ref.backpropagated`) at the layer's output there, and ``R`` the reduction factor.
:math:`G_{n,v} = J_n^\top v` is the *whole* gradient of datum ``n`` along ``v``, summed over
its shared positions for both flavours (the flavour only chooses the basis, through ``A`` and
``B``). Its row-major flattening is :math:`\sum_s g_{n,s,v}\otimes a_{n,s}` and
:math:`\mathrm{vec}(Q_B^\top G Q_A) = Q^\top\mathrm{vec}(G)`, so

.. math::  \mathrm{vec}(S) = \mathrm{diag}(Q^\top F Q), \qquad
           F = R\sum_n\sum_v \mathrm{vec}(G_{n,v})\mathrm{vec}(G_{n,v})^\top,

and ``F`` is exactly the curvature block the vectors span: the GGN for ``"type-2"``
(:math:`\sum_v vv^\top = \nabla^2_f c_n`), the empirical Fisher for ``"empirical"``, and the
MC Fisher *of the labels drawn* for ``"mc"`` (:func:`kfac_ref.labels.sampled_labels` gives
them). EKFAC is therefore the Frobenius-nearest matrix to ``F`` among those diagonal in the
basis ``Q``. A separate bias has :math:`s_b = R\sum_{n,v}(Q_B^\top\sum_s g_{n,s,v})^{\odot 2}`
(the diagonal of :math:`Q_B^\top F_b Q_B`). ``"forward-only"`` has no loss curvature to
correct and is refused.

A grouped convolution has one KFAC pair :math:`(A_g, B_g)` per group (:mod:`kfac_ref.layers`)
and so one eigenbasis :math:`Q_{B_g}\otimes Q_{A_g}` per group; :math:`S_g` is the formula
above with :math:`G^{(g)}_{n,v} = \sum_s g^{(g)}_{n,s,v}a^{(g)\top}_{n,s}`, the gradient of
group ``g``'s weight, i.e. the diagonal of the group's diagonal block of ``F`` in its basis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from kfac_ref import compute, data_parallel, losses
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors, groups_of
from kfac_ref.layers import ekfac_result, in_weight_order

EKFAC_FISHER_TYPES: tuple[str, ...] = ("type-2", "mc", "empirical")


def compute_ekfac(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Tensor, Tensor]],
    *,
    fisher_type: str = "type-2",
    kfac_approx: str = "expand",
    mc_samples: int = 1,
    seed: int = 0,
    bias: str = "separate",
    layers: Sequence[str] | None = None,
    process_group: data_parallel.ProcessGroup | None = None,
) -> dict[str, EKFACFactors | GroupedFactors]:
    """EKFAC over all batches in ``data``, one entry per layer; arguments as for
    :func:`kfac_ref.compute_kfac`, whose factors give the eigenbasis.

    Two passes over ``data``: KFAC's factors first, then the corrected eigenvalues; MC draws
    the same labels in both (one generator seeded with ``seed`` per pass). With a
    ``process_group``, ``data`` is this rank's shard: KFAC's factors and the eigenvalue sums
    are summed over ranks (:mod:`kfac_ref.data_parallel`), so every rank gets the same basis
    and EKFAC of the union of the shards. A grouped convolution's entry is a
    :class:`~kfac_ref.factors.GroupedFactors`, one EKFAC per group.
    """
    if fisher_type not in EKFAC_FISHER_TYPES:
        raise ValueError(
            f"EKFAC needs a loss curvature: fisher_type must be one of {EKFAC_FISHER_TYPES}, "
            f"got {fisher_type!r}"
        )
    data = list(data)
    arguments = dict(
        fisher_type=fisher_type, kfac_approx=kfac_approx, mc_samples=mc_samples, bias=bias
    )
    selected, rules = compute.prepare(model, loss_func, layers=layers, **arguments)
    rank_seed = data_parallel.rank_seed(seed, process_group)
    kfac = compute.input_and_grad_factors(
        model, loss_func, data, selected, rules, fisher_type, mc_samples, rank_seed, bias,
        process_group,
    )  # fmt: skip
    bases = {name: kfac_eigenbasis(factors) for name, factors in kfac.items()}
    weight_sums: dict[str, Tensor] = {}
    bias_sums: dict[str, Tensor] = {}
    num_data, num_terms = 0, None
    for batch in compute.forward_backward(
        model, loss_func, data, selected, rules, fisher_type, mc_samples, rank_seed, bias
    ):
        num_data += batch.num_data
        num_terms = batch.num_terms
        for grad_positions in batch.gradients:
            for name, grads in grad_positions.items():
                QA, QB = bases[name]
                g = rotated(grads.squeeze(0), QB)  # (N, S, d_out): Q_B^T g per position
                _add(weight_sums, name, rotated_squares(g, rotated(batch.inputs[name], QA)))
                if kfac[name].bias == "separate":
                    _add(bias_sums, name, g.sum(dim=1).square().sum(dim=0))
    data_parallel.sum_over_ranks(weight_sums, process_group)
    data_parallel.sum_over_ranks(bias_sums, process_group)
    (num_data,) = data_parallel.count_over_ranks([num_data], process_group)
    R = losses.reduction_factor(loss_func, num_data, num_terms)
    return {
        name: in_weight_order(
            rules[name],
            ekfac_result(
                QA.detach(),
                QB.detach(),
                (R * weight_sums[name]).detach(),
                kfac[name].bias,
                (R * bias_sums[name]).detach() if name in bias_sums else None,
            ),
        )
        for name, (QA, QB) in bases.items()
    }


def kfac_eigenbasis(factors: KroneckerFactors | GroupedFactors) -> tuple[Tensor, Tensor]:
    """``(Q_A, Q_B)``: orthonormal eigenvectors (columns) of KFAC's symmetric ``A`` and ``B``;
    for a grouped layer stacked over a leading group axis, one basis per group."""
    groups = groups_of(factors)
    A = groups[0].A if len(groups) == 1 else torch.stack([group.A for group in groups])
    B = groups[0].B if len(groups) == 1 else torch.stack([group.B for group in groups])
    return torch.linalg.eigh(A).eigenvectors, torch.linalg.eigh(B).eigenvectors


def rotated(positions: Tensor, basis: Tensor) -> Tensor:
    """``Q^T x`` for every position ``x`` of ``(N, S, d)``, or of ``(N, S, G, d)`` with one
    basis per group (``basis`` ``(G, d, d)``)."""
    if basis.ndim == 2:
        return positions @ basis
    return torch.einsum("nsgi,gij->nsgj", positions, basis)


def rotated_squares(rotated_grads: Tensor, rotated_inputs: Tensor) -> Tensor:
    r""":math:`\sum_n (Q_B^\top G_n Q_A)^{\odot 2}` with :math:`Q_B^\top G_n Q_A =
    \sum_s (Q_B^\top g_{n,s})(Q_A^\top a_{n,s})^\top`, from the rotated ``(N, S, d)`` tensors
    (``(N, S, G, d)`` per group, giving ``(G, d_out, d_in)``)."""
    per_datum = torch.einsum("ns...o,ns...i->n...oi", rotated_grads, rotated_inputs)
    return per_datum.square().sum(dim=0)


def _add(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    sums[name] = value.detach() if name not in sums else sums[name] + value.detach()
