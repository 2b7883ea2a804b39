"""The diagnosis and the evidence of an EKFAC or separate-bias mismatch, on hand-made blocks.

EKFAC's block is ``Q diag(S) Qᵀ``: the diagnosis tells a wrong basis (the block no longer
commutes with the expected one) from wrong corrected eigenvalues, and a separate bias's block
tells a factor on the weight's side from one on the bias block.
"""

from __future__ import annotations

import torch

from kfac_conformance.comparison.blocks import diagnose
from kfac_conformance.comparison.evidence import block_evidence
from kfac_ref.factors import EKFACFactors, KroneckerFactors

TOLERANCE = 1e-10


def _spd(size: int, generator: torch.Generator) -> torch.Tensor:
    root = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return root @ root.T + torch.eye(size, dtype=torch.float64)


def _kfac_and_ekfac(bias: str = "none") -> tuple[KroneckerFactors, EKFACFactors]:
    """KFAC factors and the EKFAC that equals them (S = λ_B λ_Aᵀ), the case where KFAC is exact."""
    generator = torch.Generator().manual_seed(3)
    A, B = _spd(3, generator), _spd(2, generator)
    eigenvalues_A, QA = torch.linalg.eigh(A)
    eigenvalues_B, QB = torch.linalg.eigh(B)
    S_bias = eigenvalues_B if bias == "separate" else None
    return KroneckerFactors(A, B, bias), EKFACFactors(
        QA, QB, torch.outer(eigenvalues_B, eigenvalues_A), bias, S_bias
    )


def test_a_scaled_S_is_a_constant_factor():
    kfac, ekfac = _kfac_and_ekfac()
    diagnosis = diagnose(ekfac.scaled(1.05), kfac.to_dense(), TOLERANCE)
    assert diagnosis.startswith("off by a constant factor x 1.05")


def test_wrong_eigenvalues_in_the_right_basis_blame_S():
    kfac, ekfac = _kfac_and_ekfac()
    S = ekfac.S.clone()
    S[0, 0] *= 3
    wrong = EKFACFactors(ekfac.QA, ekfac.QB, S)
    diagnosis = diagnose(wrong, kfac.to_dense(), TOLERANCE)
    assert diagnosis.startswith("the eigenbasis agrees with the expected block's")


def test_a_wrong_basis_is_named():
    kfac, ekfac = _kfac_and_ekfac()
    wrong = EKFACFactors(ekfac.QA.T.contiguous(), ekfac.QB, ekfac.S)
    diagnosis = diagnose(wrong, kfac.to_dense(), TOLERANCE)
    assert diagnosis.startswith("the eigenbasis is wrong")
    commutator = float(diagnosis.split("= ")[1].split(")")[0])
    assert commutator > 1e-3


def test_a_factor_on_the_weight_side_alone_is_named_through_the_counts():
    kfac, _ = _kfac_and_ekfac("separate")
    scaled = KroneckerFactors(4 * kfac.A, kfac.B, "separate")
    diagnosis = diagnose(scaled, kfac.to_dense(), TOLERANCE, quantities={"S": 4})
    assert diagnosis.startswith("the weight block is off by a constant factor x 4 = S")
    assert "the bias block is right" in diagnosis


def test_a_factor_on_the_bias_block_alone_is_named():
    kfac, ekfac = _kfac_and_ekfac("separate")
    scaled = EKFACFactors(ekfac.QA, ekfac.QB, ekfac.S, "separate", ekfac.S_bias / 4)
    diagnosis = diagnose(scaled, kfac.to_dense(), TOLERANCE)
    assert diagnosis.startswith("the bias block is off by a constant factor x 0.25")


def test_ekfac_evidence_has_the_kronecker_tiles():
    kfac, ekfac = _kfac_and_ekfac("separate")
    evidence = block_evidence("0", ekfac.scaled(2.0), kfac.to_dense())
    assert (evidence["dim_a"], evidence["dim_b"], evidence["bias_rows"]) == (3, 2, 2)
    assert evidence["size"] == 3 * 2 + 2
