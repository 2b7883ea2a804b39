"""Comparing blocks: dtype-aware tolerances, the error measure, and a diagnosis of mismatches."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from kfac_conformance.comparison import tolerances
from kfac_conformance.comparison.tolerances import float32_round_off, name_factor
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors, group_blocks


def round_off_tolerance(dtype: torch.dtype) -> float:
    """The table lives in the torch-free :mod:`kfac_conformance.comparison.tolerances` (shared with the
    JAX runner)."""
    return tolerances.round_off_tolerance(dtype)


def relative_error(candidate: Tensor, exact: Tensor) -> float:
    """``||candidate - exact||_F / ||exact||_F`` (absolute when ``exact`` is zero), in float64."""
    candidate, exact = candidate.detach().double().cpu(), exact.detach().double().cpu()
    scale = exact.norm().item()
    difference = (candidate - exact).norm().item()
    return difference / scale if scale > 0 else difference


def factor_sizes(factors: KroneckerFactors | EKFACFactors | GroupedFactors) -> tuple[int, int]:
    """``(size of A, size of B)``: the input and output sides of either kind of result; for a
    grouped convolution a group's ``A`` and the whole layer's output side (the sum of the
    groups' ``B``), so that the weight has ``size of B`` rows of ``size of A`` entries as
    for any other layer."""
    if isinstance(factors, GroupedFactors):
        sizes = [factor_sizes(group) for group in factors.groups]
        return sizes[0][0], sum(size_B for _, size_B in sizes)
    if isinstance(factors, EKFACFactors):
        return factors.QA.shape[0], factors.QB.shape[0]
    return factors.A.shape[0], factors.B.shape[0]


def kfac_pattern(factors: KroneckerFactors | EKFACFactors) -> Tensor | None:
    """Entries KFAC is meant to approximate: all, or without cross terms for a separate bias."""
    if factors.bias != "separate":
        return None
    size_A, size_B = factor_sizes(factors)
    size = size_A * size_B + size_B
    weight = size - size_B
    pattern = torch.zeros(size, size, dtype=torch.bool)
    pattern[:weight, :weight] = True
    pattern[weight:, weight:] = True
    return pattern


def restrict(block: Tensor, pattern: Tensor | None) -> Tensor:
    if pattern is None:
        return block
    return torch.where(
        pattern.to(block.device), block, torch.zeros((), dtype=block.dtype, device=block.device)
    )


def _ones_moved_last(A: Tensor) -> Tensor:
    order = torch.cat([torch.arange(1, A.shape[0]), torch.zeros(1, dtype=torch.long)])
    return A[order][:, order]


def diagnose(
    factors: KroneckerFactors | EKFACFactors,
    exact: Tensor,
    tolerance: float,
    alternatives: Mapping[str, Tensor] | None = None,
    quantities: Mapping[str, float] | None = None,
) -> str | None:
    """Name the most likely cause of a mismatch, testing hypotheses against the exact block.

    ``alternatives`` are other exact blocks of the same layer (e.g. the empirical Fisher when
    the GGN was asked for); a candidate equal to one of them is named after it. A constant
    factor on the whole block is given but not named: one problem's counts name it by
    coincidence as often as not, so the run's scale summary names it against the counts of
    every such failure (:mod:`kfac_conformance.reports.scale_summary`). ``quantities`` (see
    :func:`name_factor`) name a factor on the weight or the bias block alone. An EKFAC block is
    told apart by whether its eigenbasis or its corrected eigenvalues are wrong
    (:func:`_diagnose_ekfac`).
    """
    candidate = factors.to_dense().detach().double().cpu()
    exact = exact.detach().double().cpu()
    pattern = kfac_pattern(factors)
    target = restrict(exact, pattern)
    if not torch.isfinite(candidate).all():
        return "the block has NaN or inf entries"
    if candidate.shape != target.shape:
        return f"block shape {tuple(candidate.shape)} differs from the exact {tuple(target.shape)}"
    scale, residual = fitted_factor(candidate, target)
    if scale != 0 and residual <= tolerance:
        return f"off by a constant factor x {scale:.6g}: a reduction or convention factor?"
    if isinstance(factors, GroupedFactors):
        groups = _diagnose_groups(factors, target, tolerance)
        if groups is not None:
            return groups
    kronecker = isinstance(factors, KroneckerFactors)
    swapped = (
        KroneckerFactors(factors.B, factors.A, "none")
        if kronecker and factors.bias == "none"
        else None
    )
    if swapped is not None and swapped.A.shape[0] * swapped.B.shape[0] == target.shape[0]:
        swapped_dense = torch.kron(factors.A, factors.B).double().cpu()
        if relative_error(swapped_dense, target) <= tolerance:
            return "Kronecker order swapped: kron(A, B) matches, i.e. column-major flattening or A and B exchanged"
    for name, block in (alternatives or {}).items():
        other = restrict(block.detach().double().cpu(), pattern)
        if relative_error(candidate, other) <= tolerance:
            return f"equals the {name} block instead"
        ratio = (candidate * other).sum() / (other * other).sum().clamp_min(1e-300)
        if ratio.abs() > 0 and relative_error(candidate / ratio, other) <= tolerance:
            return f"equals the {name} block times {ratio.item():.6g} instead"
    if kronecker and factors.bias == "joint":
        joint = _diagnose_joint_bias(factors, candidate, exact, tolerance)
        if joint is not None:
            return joint
    if factors.bias == "separate":
        separate = _diagnose_separate_bias(
            candidate, target, factor_sizes(factors)[1], tolerance, quantities or {}
        )
        if separate is not None:
            return separate
    cast = float32_round_off(relative_error(candidate, target), tolerance)
    if cast is not None:
        return cast
    if isinstance(factors, EKFACFactors):
        return _diagnose_ekfac(candidate, target, tolerance)
    return None


def _diagnose_groups(factors: GroupedFactors, target: Tensor, tolerance: float) -> str | None:
    """Some groups right and others wrong: each group's factors from other channels than its
    own (the groups ignored)."""
    errors = [
        relative_error(group.to_dense(), block) for group, block in group_blocks(factors, target)
    ]
    wrong = [g for g, error in enumerate(errors) if not error <= tolerance]
    right = [g for g, error in enumerate(errors) if error <= tolerance]
    if wrong and right:
        return (
            f"wrong only in groups {wrong} (right in {right}) of the grouped convolution: does "
            "every group take its factors from its own channels?"
        )
    return None


def fitted_factor(candidate: Tensor, target: Tensor) -> tuple[float, float]:
    """``(c, r)``: the least-squares ``c`` with ``candidate ≈ c * target``, and the relative
    error ``r`` of ``candidate / c`` against ``target`` (``(0, inf)`` when ``c`` is 0)."""
    candidate, target = candidate.detach().double().cpu(), target.detach().double().cpu()
    scale = ((candidate * target).sum() / (target * target).sum().clamp_min(1e-300)).item()
    if scale == 0:
        return 0.0, float("inf")
    return scale, relative_error(candidate / scale, target)


def _diagnose_separate_bias(
    candidate: Tensor,
    target: Tensor,
    size_B: int,
    tolerance: float,
    quantities: Mapping[str, float],
) -> str | None:
    """With a separate bias, one of the two blocks scaled and the other right: a factor applied
    to the weight's side alone (``A``, or EKFAC's ``S``) or to the bias block alone."""
    weight = candidate.shape[0] - size_B
    parts = {
        "weight": (candidate[:weight, :weight], target[:weight, :weight]),
        "bias": (candidate[weight:, weight:], target[weight:, weight:]),
    }
    right = {name: relative_error(*pair) <= tolerance for name, pair in parts.items()}
    for wrong, blame in (("weight", "A (EKFAC: S)"), ("bias", "the bias block (EKFAC: S_bias)")):
        if right[wrong]:
            continue
        other = "bias" if wrong == "weight" else "weight"
        scale, residual = fitted_factor(*parts[wrong])
        if right[other] and scale != 0 and residual <= tolerance:
            named = name_factor(scale, quantities)
            explanation = f" = {named}" if named else ""
            return (
                f"the {wrong} block is off by a constant factor x {scale:.6g}{explanation} "
                f"and the {other} block is right: {blame} carries a factor it must not"
            )
    return None


def _diagnose_ekfac(candidate: Tensor, target: Tensor, tolerance: float) -> str:
    r"""Basis or eigenvalues: symmetric ``C`` and ``T`` commute exactly when one orthonormal basis
    diagonalises both, so :math:`\|CT - TC\|_F / (\|C\|_F\|T\|_F)` within ``tolerance`` clears
    the candidate's basis and leaves ``S``; beyond it, the basis is wrong whatever ``S`` is."""
    scale = (candidate.norm() * target.norm()).clamp_min(1e-300)
    commutator = ((candidate @ target - target @ candidate).norm() / scale).item()
    if commutator <= tolerance:
        return (
            "the eigenbasis agrees with the expected block's (the two commute): the corrected "
            "eigenvalues S are wrong"
        )
    return (
        f"the eigenbasis is wrong: the block does not commute with the expected one "
        f"(‖CT − TC‖/(‖C‖‖T‖) = {commutator:.2g}), so QB ⊗ QA does not diagonalise it"
    )


def _diagnose_joint_bias(
    factors: KroneckerFactors, candidate: Tensor, exact: Tensor, tolerance: float
) -> str | None:
    rolled = KroneckerFactors(_ones_moved_last(factors.A), factors.B, "joint")
    if relative_error(rolled.to_dense(), exact) <= tolerance:
        return (
            "ones row misplaced: A matches once its first row and column are moved last "
            "(bias='joint' appends the constant one as the last input, not the first)"
        )
    weight = factors.A.shape[0] * factors.B.shape[0] - factors.B.shape[0]
    cross = candidate[:weight, weight:]
    if cross.abs().max() == 0 and exact[:weight, weight:].abs().max() > 0:
        return "weight-bias cross terms are zero although bias='joint' was asked for"
    if relative_error(candidate[weight:, weight:], exact[weight:, weight:]) > tolerance and (
        relative_error(candidate[:weight, :weight], exact[:weight, :weight]) <= tolerance
    ):
        return "the weight block is right but the bias entries are wrong (ones row misplaced?)"
    return None
