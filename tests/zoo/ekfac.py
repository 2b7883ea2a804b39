"""Pitfalls of EKFAC: the corrected eigenvalues and the eigenbasis they live in."""

from __future__ import annotations

import dataclasses

import torch

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref import ekfac
from kfac_ref.factors import EKFACFactors

from .base import Mutant, reference_compute, replace

_original_eigenbasis = ekfac.kfac_eigenbasis


class EkfacMutant(Mutant):
    """An EKFAC mutant claims EKFAC and exposes its MC labels, as the reference does."""

    capabilities = Capabilities(approximations=frozenset({"kfac", "ekfac"}))
    sampled_labels = ReferenceCandidate.sampled_labels

    def compute(self, problem: Problem, request: Request):
        result = super().compute(problem, request)
        if request.approximation != "ekfac":
            return result
        return {layer: self.mistake(problem, factors) for layer, factors in result.items()}

    def mistake(self, problem: Problem, factors: EKFACFactors) -> EKFACFactors:
        """The bug applied to one layer's result (the identity where it is planted instead)."""
        return factors


class EkfacUncorrected(EkfacMutant):
    """EKFAC's eigenvalues left uncorrected: S = λ_B λ_Aᵀ (KFAC's own eigenvalues), i.e. KFAC
    written in its eigenbasis.

    Equal to EKFAC wherever KFAC is exact; killed by ekfac/correction-exact on the many-data
    agreement cases, where the diagnosis names the outer product.
    """

    killers = ("ekfac/correction-exact-type-2[mlp[tanh-ce-batch]]",)
    diagnosis = "S is an outer product"

    def compute(self, problem: Problem, request: Request):
        if request.approximation != "ekfac":
            return reference_compute(problem, request)
        kfac = reference_compute(problem, dataclasses.replace(request, approximation="kfac"))
        result = {}
        for layer, factors in kfac.items():
            eigenvalues_A, QA = torch.linalg.eigh(factors.A)
            eigenvalues_B, QB = torch.linalg.eigh(factors.B)
            S = torch.outer(eigenvalues_B, eigenvalues_A)
            S_bias = eigenvalues_B if factors.bias == "separate" else None
            result[layer] = EKFACFactors(QA, QB, S, factors.bias, S_bias)
        return result


class EkfacFromBatchGradient(EkfacMutant):
    """The correction squares the batch's gradient (per-datum gradients summed first) instead
    of summing the squares of the per-datum gradients.

    Identical on one datum; killed by ekfac/correction-exact on the many-data cases.
    """

    killers = ("ekfac/correction-exact-type-2[mlp[tanh-ce-batch]]",)

    def patches(self, request: Request):
        def batch_squared(rotated_grads, rotated_inputs):
            batch = torch.einsum("nso,nsi->oi", rotated_grads, rotated_inputs)
            return batch.square()

        return [replace(ekfac, "rotated_squares", batch_squared)]


class EkfacTransposedS(EkfacMutant):
    """S stored (dim A, dim B) and read back as (dim B, dim A): the corrected eigenvalue of
    QB's column i and QA's column j lands elsewhere.

    Killed by ekfac/correction-exact on every layer with more than one corrected eigenvalue
    that is not constant; the diagnosis names the transposition.
    """

    killers = ("ekfac/correction-exact-type-2[mlp[tanh-ce-batch]]",)
    diagnosis = "S is transposed"

    def mistake(self, problem: Problem, factors: EKFACFactors) -> EKFACFactors:
        S = factors.S.T.contiguous().reshape(factors.S.shape)
        return EKFACFactors(factors.QA, factors.QB, S, factors.bias, factors.S_bias)


class EkfacBasisFromWrongFactor(EkfacMutant):
    """The eigenbases of A and B exchanged (QA from B, QB from A), with the eigenvalues
    corrected consistently in that wrong basis.

    The result keeps valid shapes only where A and B have the same size, so only such layers
    are affected. The correction is exact in the candidate's own basis, so only the basis can
    show it: killed by ekfac/kfac-eigenbasis on the one-datum MLP's 3x3 layer, whose diagnosis
    says QA and QB are exchanged, and by ekfac/equals-exact-where-kfac-is there, whose
    diagnosis says the eigenbasis is wrong.
    """

    killers = (
        "ekfac/kfac-eigenbasis[one-datum-mlp[tanh-mse-mean]]",
        "ekfac/equals-exact-where-kfac-is[one-datum-mlp[tanh-mse-mean]]",
    )
    diagnosis = "QA and QB exchanged"

    def patches(self, request: Request):
        def exchanged(factors):
            QA, QB = _original_eigenbasis(factors)
            return (QB, QA) if QA.shape == QB.shape else (QA, QB)

        return [replace(ekfac, "kfac_eigenbasis", exchanged)]


class EkfacReductionFactorMissing(EkfacMutant):
    """The corrected eigenvalues are not multiplied by R (KFAC's B is): with reduction='mean'
    S is that of the summed loss.

    Killed by ekfac/correction-exact on mean-reduced cases; the run's scale summary names 1/R.
    """

    killers = ("ekfac/correction-exact-type-2[mlp[tanh-ce-batch]]",)
    diagnosis = "= 1/R"

    def mistake(self, problem: Problem, factors: EKFACFactors) -> EKFACFactors:
        return factors.scaled(1 / problem.scale_quantities()["R"])


class EkfacEigenvaluesTooLarge(EkfacMutant):
    """Every corrected eigenvalue 5 % too large (S and S_bias times 1.05), as a stray damping
    or a running average's bias correction applied twice would make them.

    Killed by ekfac/equals-exact-where-kfac-is, where the block must equal the exact one; the
    diagnosis names the constant factor.
    """

    killers = ("ekfac/equals-exact-where-kfac-is[deep-linear[mse-sum-1batch]]",)
    diagnosis = "off by a constant factor x 1.05"

    def mistake(self, problem: Problem, factors: EKFACFactors) -> EKFACFactors:
        return factors.scaled(1.05)


class EkfacEigenvectorsAsRows(EkfacMutant):
    """The eigenvectors read from the rows of ``eigh``'s matrix instead of its columns (QA and
    QB transposed), with the eigenvalues corrected consistently in that wrong basis.

    Still orthonormal, and S is right in the candidate's own basis, so only the basis can show
    it: killed by ekfac/kfac-eigenbasis, whose diagnosis says the eigenvectors were read from
    rows, and by ekfac/equals-exact-where-kfac-is, whose diagnosis says the eigenbasis is wrong.
    """

    killers = (
        "ekfac/kfac-eigenbasis[deep-linear[mse-sum-1batch]]",
        "ekfac/equals-exact-where-kfac-is[deep-linear[mse-sum-1batch]]",
    )
    diagnosis = "eigenvectors read from rows"

    def patches(self, request: Request):
        def rows(factors):
            QA, QB = _original_eigenbasis(factors)
            return QA.T, QB.T

        return [replace(ekfac, "kfac_eigenbasis", rows)]
