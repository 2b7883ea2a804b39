r"""EKFAC (George et al. 2018): the eigenvalue correction is exact on every problem.

A candidate's EKFAC is :math:`Q\,\mathrm{diag}(S)\,Q^\top` with :math:`Q = Q_B\otimes Q_A`
(:class:`kfac_ref.factors.EKFACFactors`). Whatever the architecture, the corrected
eigenvalues are the diagonal of the exact curvature block in that basis,

.. math::  \mathrm{vec}(S) = \mathrm{diag}(Q^\top F Q),

where ``F`` is the block the per-datum vectors span: the GGN for ``"type-2"``, the empirical
Fisher for ``"empirical"``, and for ``"mc"`` the MC Fisher of the labels the candidate drew
(which it exposes by the optional method ``sampled_labels(problem, request)``, one
``(mc_samples, *y.shape)`` tensor per batch; a candidate without it is skipped there, and
only the statistical ``ekfac/mc-trace-unbiased`` holds its MC EKFAC to scale). The
checks hold the candidate to this in its *own* basis, so eigenvector signs and the order
within degenerate eigenspaces are free; that the basis is KFAC's is checked on its own, by
:math:`Q_A^\top A Q_A` and :math:`Q_B^\top B Q_B` being diagonal for the candidate's own KFAC
factors where it claims KFAC, else the reference's (the projector onto each eigenspace is
what is identifiable, and a diagonal :math:`Q^\top K Q` says exactly that ``Q`` spans them).
Together they make EKFAC the Frobenius-nearest matrix to ``F`` that is diagonal in KFAC's
basis, hence :math:`\|F - \mathrm{EKFAC}\|_F \le \|F - \mathrm{KFAC}\|_F`, and equal to KFAC
(and ``F``) where KFAC is exact. ``"forward-only"`` has no loss curvature and no EKFAC.
"""

from __future__ import annotations

from kfac_conformance.checks.base import Check
from kfac_conformance.checks.ekfac import (
    basis,
    eigenvalues,
    exact,
    invariance,
    statistical,
    structure,
)

CHECKS: list[Check] = [
    *eigenvalues.CHECKS,
    *statistical.CHECKS,
    *basis.CHECKS,
    *exact.CHECKS,
    *structure.CHECKS,
    *invariance.CHECKS,
]
