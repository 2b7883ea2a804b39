"""The reference's answers stored with the agreement cases are kfac_ref's, recomputed now.

Same code, same float64 inputs: the answers agree to round-off of a different summation order
at most, held to a relative Frobenius error of 1e-12 per layer's dense block.
"""

from __future__ import annotations

import pytest
import torch

from kfac_conformance.cases import stored as torch_fixtures
from kfac_conformance.cases.stored_reference import BIAS_MODES, stored_flavours
from kfac_conformance.comparison.blocks import relative_error
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.neutral import fixtures
from kfac_conformance.neutral.factors import dense_block

BOUND = 1e-12
AGREEMENT_CASE_IDS = [c for c in fixtures.case_ids() if fixtures.load(c).kind == "agreement"]


@pytest.mark.parametrize("approximation", ["kfac", "ekfac"])
@pytest.mark.parametrize("case_id", AGREEMENT_CASE_IDS)
def test_stored_answers_are_kfac_refs(case_id: str, approximation: str):
    case = fixtures.load(case_id)
    fisher_types = case.reference_fisher_types(approximation)
    assert fisher_types, f"{case_id} stores no {approximation} answer"
    flavours = stored_flavours(case.shared_positions)
    assert case.record["reference"]["flavours"] == list(flavours)
    stored_answer = case.reference_ekfac if approximation == "ekfac" else case.reference_kfac
    for fisher_type in fisher_types:
        for flavour in flavours:
            for bias in BIAS_MODES:
                request = Request(fisher_type, flavour, bias=bias, approximation=approximation)
                live = reference_compute(torch_fixtures.load_problem(case_id), request)
                stored = stored_answer(fisher_type, flavour, bias)
                assert list(stored) == list(live) == case.layers
                for layer, factors in stored.items():
                    assert factors.bias == live[layer].bias, (request, layer)
                    error = relative_error(
                        torch.from_numpy(dense_block(factors)), live[layer].to_dense()
                    )
                    assert error <= BOUND, (request, layer, error)


def test_reduce_without_weight_sharing_reads_expand():
    case = fixtures.load("mlp[tanh-ce-batch]")
    assert not case.weight_sharing and case.record["reference"]["flavours"] == ["expand"]
    expand = case.reference_kfac("type-2", "expand", "joint")
    reduce = case.reference_kfac("type-2", "reduce", "joint")
    for layer in case.layers:
        assert (dense_block(expand[layer]) == dense_block(reduce[layer])).all()


def test_an_answer_not_stored_is_refused_by_name():
    case = fixtures.load("mlp[tanh-ce-batch]")
    with pytest.raises(KeyError, match="stores no reference kfac answer for fisher type 'mc'"):
        case.reference_kfac("mc", "expand", "joint")
    canonical = fixtures.load("deep-linear[mse-sum-1batch]")
    assert canonical.reference_fisher_types("kfac") == []
    with pytest.raises(KeyError, match="stores no reference"):
        canonical.reference_kfac("type-2", "expand", "joint")
