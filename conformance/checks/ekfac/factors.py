"""Linear algebra of a candidate's EKFAC factors, in float64: the corrected eigenvalues it
should have, the ones it has, and how far its bases are from orthonormal and diagonalising."""

from __future__ import annotations

import torch
from torch import Tensor

from kfac_ref.factors import EKFACFactors, GroupedFactors, group_blocks, joint_order


def corrected_eigenvalues(factors: EKFACFactors | GroupedFactors, block: Tensor) -> Tensor:
    r"""``diag(Q^T F Q)`` in float64 for the candidate's basis, laid out like ``S`` (followed by
    :math:`\mathrm{diag}(Q_B^\top F_b Q_B)` for a separate bias), flattened.

    ``block`` is over ``[weight.flatten(), bias]``; a joint bias is first reordered into the
    row-major ``[W | b]`` the basis acts on. The diagonal is the column sums of
    :math:`Q\odot(FQ)`. A grouped convolution's are each group's, from the group's diagonal
    block of ``block``, concatenated in group order (as :func:`flat_eigenvalues` lays them out).
    """
    if isinstance(factors, GroupedFactors):
        return torch.cat([corrected_eigenvalues(*pair) for pair in group_blocks(factors, block)])
    QA, QB = factors.QA.detach().double().cpu(), factors.QB.detach().double().cpu()
    F = block.detach().double().cpu()
    if factors.bias == "joint":
        row_major = torch.argsort(joint_order(QB.shape[0], QA.shape[0]))
        F = F[row_major][:, row_major]
    Q = torch.kron(QB, QA)
    weight = Q.shape[0]
    parts = [(Q * (F[:weight, :weight] @ Q)).sum(dim=0)]
    if factors.bias == "separate":
        parts.append((QB * (F[weight:, weight:] @ QB)).sum(dim=0))
    return torch.cat(parts)


def flat_eigenvalues(factors: EKFACFactors | GroupedFactors) -> Tensor:
    """The candidate's ``S`` (and ``S_bias``) flattened, in float64, to compare with
    :func:`corrected_eigenvalues`; a grouped convolution's group by group."""
    if isinstance(factors, GroupedFactors):
        return torch.cat([flat_eigenvalues(group) for group in factors.groups])
    parts = [factors.S.flatten()]
    if factors.S_bias is not None:
        parts.append(factors.S_bias)
    return torch.cat([part.detach().double().cpu() for part in parts])


def orthonormality_error(basis: Tensor) -> float:
    r""":math:`\|Q^\top Q - I\|_F / \sqrt d` in float64."""
    Q = basis.detach().double().cpu()
    identity = torch.eye(Q.shape[0], dtype=Q.dtype)
    return ((Q.T @ Q - identity).norm() / Q.shape[0] ** 0.5).item()


def off_diagonal(basis: Tensor, factor: Tensor) -> float:
    r""":math:`\|\mathrm{offdiag}(Q^\top K Q)\|_F / \|K\|_F` in float64: zero exactly when the
    columns of ``Q`` span ``K``'s eigenspaces, whatever their signs and order."""
    Q, K = basis.detach().double().cpu(), factor.detach().double().cpu()
    rotated = Q.T @ K @ Q
    leak = (rotated - torch.diag(torch.diagonal(rotated))).norm() / K.norm().clamp_min(1e-300)
    return leak.item()
