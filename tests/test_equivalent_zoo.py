"""Correct code is never red: every equivalent candidate passes what the reference passes.

Each candidate of :mod:`equivalent_zoo` runs the whole default profile; its status on every
item must be the reference's (passed where it passed, skipped where it skipped), and the suite
must never raise. The forms that break the hygiene rule (results detached, in the problem's
dtype) fail one ``hygiene/*`` item of their own, and are judged on their values everywhere else.
"""

from __future__ import annotations

import pytest
import torch
from equivalent_zoo import (
    EQUIVALENTS,
    RESCALING,
    Equivalent,
    FlippedEigenvectorSigns,
    LayersInReverseOrder,
    RescaledPair,
    RotatedDegenerateEigenbasis,
    StridedStorage,
    TransposedViews,
    UnderInferenceMode,
)
from running import inline
from suite_guard import suite_exceptions

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import run_items
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref.factors import EKFACFactors, KroneckerFactors

PROFILE = "default"
DEFAULT_PLAN = plan(PROFILE, case_entries(PROFILE))
HYGIENE_FAMILY = "hygiene"
CLEAN = [form for form in EQUIVALENTS if form.hygiene is None]
UNHYGIENIC = [form for form in EQUIVALENTS if form.hygiene is not None]


@pytest.fixture(scope="module")
def reference_statuses() -> dict[str, str]:
    return {
        result.item_id: result.status
        for result in run_items(ReferenceCandidate(), DEFAULT_PLAN, inline(PROFILE))
    }


def default_run(form: type[Equivalent]) -> list[Result]:
    """The default profile's items that see the answers the form changes (EKFAC's are asked
    for by the ``ekfac`` family only)."""
    items = [
        item
        for item in DEFAULT_PLAN
        if ("ekfac" if item.check.family == "ekfac" else "kfac") in form.changes
    ]
    return list(run_items(form(), items, inline(PROFILE)))


def differences(results: list[Result], reference: dict[str, str]) -> list[str]:
    """The items whose status differs from the reference's, but for the layer types a form
    does not claim (a channels-last copy exists only for 4-d tensors)."""
    return [
        f"{result.item_id}: {result.status} (reference: {reference[result.item_id]}) "
        f"{result.message[:300]}"
        for result in results
        if result.status != reference[result.item_id]
        and not (result.status == "skipped" and result.message.startswith(UNCLAIMED_LAYERS))
    ]


UNCLAIMED_LAYERS = "not supported: layer types"


def test_the_zoo_has_every_kind_of_form():
    assert len(EQUIVALENTS) >= 12
    assert {form.hygiene for form in UNHYGIENIC} == {"detach it", "return the problem's dtype"}


@pytest.mark.parametrize("form", CLEAN, ids=lambda form: form.__name__)
def test_the_equivalent_candidate_passes_every_item_the_reference_passes(
    form: type[Equivalent], reference_statuses
):
    results = default_run(form)
    assert len(results) >= 280
    assert sum(reference_statuses[result.item_id] == "passed" for result in results) >= 275
    assert not suite_exceptions(results)
    wrong = differences(results, reference_statuses)
    assert not wrong, f"{len(wrong)} items differ from the reference: {wrong[:10]}"


@pytest.mark.parametrize("form", UNHYGIENIC, ids=lambda form: form.__name__)
def test_a_hygiene_problem_fails_its_own_check_and_nothing_else(
    form: type[Equivalent], reference_statuses
):
    results = default_run(form)
    assert not suite_exceptions(results)
    hygiene = [result for result in results if result.check_id.startswith(f"{HYGIENE_FAMILY}/")]
    assert any(
        result.status == "failed" and form.hygiene in result.message for result in hygiene
    ), [f"{result.item_id}: {result.status} {result.message}" for result in hygiene]
    judged = [result for result in results if result not in hygiene]
    wrong = differences(judged, reference_statuses)
    assert not wrong, f"{len(wrong)} items differ from the reference: {wrong[:10]}"


# The forms are what they claim: a test above that passes has met them.

ONE_DATUM = "one-datum-mlp[tanh-mse-mean]"


def _answers(form: type[Equivalent], request: Request, case: str = ONE_DATUM):
    problem = ALL_CASES[case].make_problem()
    return form().compute(problem, request), reference_compute(problem, request)


def test_factors_of_any_layout_are_stored_contiguous_and_compare():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    A = A @ A.T
    B = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    B = B @ B.T
    factors = KroneckerFactors(A.T, B)  # torch.kron refuses A.T beside a contiguous B
    assert factors.A.is_contiguous()
    assert torch.equal(factors.to_dense(), torch.kron(B, A))
    QA = torch.linalg.eigh(A).eigenvectors  # column-major, as eigh returns it
    assert not QA.is_contiguous()
    QB = torch.linalg.eigh(B).eigenvectors.contiguous()
    S = torch.rand(2, 3, generator=generator, dtype=torch.float64)
    block = EKFACFactors(QA, QB, S).to_dense()
    basis = torch.kron(QB, QA.contiguous())
    assert torch.allclose(block, basis @ torch.diag(S.flatten()) @ basis.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", [TransposedViews, StridedStorage], ids=lambda f: f.__name__)
def test_the_layout_forms_return_the_reference_values(form):
    for approximation in ("kfac", "ekfac"):
        answer, reference = _answers(form, Request("type-2", approximation=approximation))
        for layer, factors in answer.items():
            assert torch.equal(factors.to_dense(), reference[layer].to_dense())


def test_the_rescaled_pair_is_rescaled_where_the_bias_allows():
    answer, reference = _answers(RescaledPair, Request("type-2", bias="joint"))
    for layer, factors in answer.items():
        assert torch.allclose(factors.A, RESCALING * reference[layer].A, rtol=1e-15, atol=0)
        assert torch.allclose(factors.to_dense(), reference[layer].to_dense(), rtol=1e-13)


def test_the_rotated_eigenbasis_is_another_basis_of_the_same_block():
    # one datum: A = a aᵀ has a zero eigenvalue of multiplicity dim A - 1
    answer, reference = _answers(
        RotatedDegenerateEigenbasis, Request("type-2", approximation="ekfac")
    )
    rotated = 0
    for layer, factors in answer.items():
        overlap = (factors.QA.T @ reference[layer].QA).abs()
        # a signed permutation has one entry 1 per row; a rotation spreads them
        rotated += int((overlap.max(dim=1).values < 1 - 1e-6).sum())
        assert torch.allclose(factors.to_dense(), reference[layer].to_dense(), rtol=0, atol=1e-12)
    assert rotated >= 2


def test_the_flipped_signs_flip_some_eigenvectors():
    answer, reference = _answers(FlippedEigenvectorSigns, Request("type-2", approximation="ekfac"))
    flipped = 0
    for layer, factors in answer.items():
        signs = torch.sign((factors.QB * reference[layer].QB).sum(dim=0))
        flipped += int((signs < 0).sum())
        assert torch.allclose(factors.to_dense(), reference[layer].to_dense(), rtol=0, atol=1e-12)
    assert flipped >= 1


def test_inference_mode_answers_are_inference_tensors():
    answer, _ = _answers(UnderInferenceMode, Request("type-2"))
    assert all(factors.A.is_inference() and factors.B.is_inference() for factors in answer.values())


def test_the_layers_come_in_reverse_order():
    problem = ALL_CASES[ONE_DATUM].make_problem()
    answer = LayersInReverseOrder().compute(problem, Request("type-2"))
    assert len(problem.layers) > 1
    assert list(answer) == list(reversed(problem.layers))
