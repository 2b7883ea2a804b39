"""The ekfac/* family: what it skips, how it rejects malformed EKFAC results, what it measures."""

from __future__ import annotations

import torch
from running import inline

from kfac_conformance.checks.ekfac.factors import corrected_eigenvalues, flat_eigenvalues
from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref.factors import EKFACFactors

CASE = "mlp[tanh-ce-batch]"


def _results(candidate, select):
    items = plan("default", case_entries("default"), [select])
    assert items, select
    return {result.item_id: result for result in run_items(candidate, items, inline())}


class KfacOnly(ReferenceCandidate):
    name = "kfac-only"
    capabilities = Capabilities()


class WithoutLabels:
    """The reference's EKFAC without the optional ``sampled_labels``."""

    name = "without-labels"
    capabilities = ReferenceCandidate.capabilities
    compute = ReferenceCandidate.compute


class OutputBasisFromInputs(ReferenceCandidate):
    """Returns QA in place of QB (and S, S_bias shaped to match it)."""

    name = "output-basis-from-inputs"

    def compute(self, problem, request):
        result = super().compute(problem, request)
        if request.approximation != "ekfac":
            return result
        return {layer: self._wrong(f) for layer, f in result.items()}

    @staticmethod
    def _wrong(f: EKFACFactors) -> EKFACFactors:
        size = f.QA.shape[0]
        S_bias = None if f.S_bias is None else f.QA.new_zeros(size)
        return EKFACFactors(f.QA, f.QA, f.QA.new_zeros(size, size), f.bias, S_bias)


def test_a_candidate_that_claims_no_ekfac_is_skipped_with_the_reason():
    results = _results(KfacOnly(), f"ekfac/*[{CASE}]")
    assert {r.status for r in results.values()} == {"skipped"}
    assert all("approximations ['ekfac']" in r.message for r in results.values())


def test_mc_correction_without_exposed_labels_is_skipped_and_the_rest_runs():
    results = _results(WithoutLabels(), f"ekfac/*[{CASE}]")
    mc = results[f"ekfac/correction-exact-mc[{CASE}]"]
    assert mc.status == "skipped" and "sampled_labels" in mc.message
    others = [r for item_id, r in results.items() if "correction-exact-mc" not in item_id]
    assert others and all(r.status == "passed" for r in others)


def test_a_malformed_ekfac_result_fails_with_a_precise_message():
    results = _results(OutputBasisFromInputs(), f"ekfac/correction-exact-type-2[{CASE}]")
    (result,) = results.values()
    assert result.status == "failed"
    assert "invalid result for layer '0', factor QB: shape expected (4, 4), got (5, 5)" in (
        result.message
    )


def test_corrected_eigenvalues_of_a_block_diagonal_in_the_basis_are_its_eigenvalues():
    generator = torch.Generator().manual_seed(0)
    QA = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))[0]
    QB = torch.linalg.qr(torch.randn(2, 2, generator=generator, dtype=torch.float64))[0]
    S = torch.rand(2, 3, generator=generator, dtype=torch.float64)
    S_bias = torch.rand(2, generator=generator, dtype=torch.float64)
    for factors in (
        EKFACFactors(QA, QB, S),
        EKFACFactors(QA, QB, S, "separate", S_bias),
        EKFACFactors(QA, QB, S, "joint"),
    ):
        expected = corrected_eigenvalues(factors, factors.to_dense())
        assert torch.allclose(expected, flat_eigenvalues(factors), rtol=0, atol=1e-12)
