"""The harness catches real bugs: every mutant of the zoo fails the default profile.

Each mutant is run on every item of the default plan it names as its killers (the full default
run takes seconds per candidate; the whole zoo against everything is what
``python -m kfac_conformance.reports.kill_matrix`` does). Only a failure kills: an item that
errors, on a killer or anywhere in these runs, is a defect of the suite or of the mutant. A
mutant that survives is a missing check.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from running import inline
from suite_guard import suite_exceptions
from zoo import MUTANTS, Mutant

import kfac_ref
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import TUTORIAL, Conventions
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.plan import Item, case_entries, plan
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import run_items
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_conformance.reports.scale_summary import summarize
from kfac_ref import compute, ekfac, layers, losses

PROFILE = "default"
DEFAULT_PLAN = plan(PROFILE, case_entries(PROFILE))
DIAGNOSED = [mutant for mutant in MUTANTS if mutant.diagnosis is not None]


def killer_items(mutant: type[Mutant]) -> list[Item]:
    return [
        item
        for item in DEFAULT_PLAN
        if item.id in mutant.killers or item.check.id in mutant.killers
    ]


def test_the_zoo_has_at_least_fifteen_documented_mutants():
    assert len(MUTANTS) >= 15
    assert len({mutant.__name__ for mutant in MUTANTS}) == len(MUTANTS)
    for mutant in MUTANTS:
        doc = inspect.getdoc(mutant) or ""
        assert len(mutant.pitfall()) > 40, f"{mutant.__name__} states no pitfall"
        assert "killed by" in doc.lower(), f"{mutant.__name__} names no killer"


def test_most_mutants_name_the_diagnosis_their_failure_carries():
    assert len(DIAGNOSED) >= 2 * len(MUTANTS) // 3


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_every_killer_names_items_of_the_default_plan(mutant: type[Mutant]):
    assert mutant.killers
    for killer in mutant.killers:
        assert any(killer in (item.id, item.check.id) for item in DEFAULT_PLAN), killer


@pytest.fixture(scope="module")
def killer_runs() -> dict[str, list[Result]]:
    """Per mutant: the results of all its killer items, in plan order."""
    return {
        mutant.__name__: list(run_items(mutant(), killer_items(mutant), inline(PROFILE)))
        for mutant in MUTANTS
    }


def _outcomes(results: list[Result]) -> list[str]:
    return [f"{result.item_id}: {result.status} {result.message[:200]}" for result in results]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_the_default_profile_kills_the_mutant_with_a_failure(mutant: type[Mutant], killer_runs):
    results = killer_runs[mutant.__name__]
    assert any(result.status == "failed" for result in results), (
        f"{mutant.__name__} survived its killers (a missing check): {_outcomes(results)}"
    )
    errors = _outcomes([result for result in results if result.status == "error"])
    assert not errors, f"an error is no kill (a defect of the suite or the mutant): {errors}"


@pytest.mark.parametrize("mutant", DIAGNOSED, ids=lambda mutant: mutant.__name__)
def test_the_failure_carries_the_diagnosis_that_names_the_pitfall(
    mutant: type[Mutant], killer_runs
):
    results = killer_runs[mutant.__name__]
    diagnoses = [r.diagnosis for r in results if r.status == "failed" and r.diagnosis]
    # a constant factor is named by the run's scale summary, from the counts of every failure
    # (the names do not depend on the declared conventions)
    scales = summarize(results, TUTORIAL)
    diagnoses += [
        f"off by a constant factor x {row.factor:g} = {name}"
        for row in (scales.rows if scales else [])
        for name in row.named.split(" or ")
    ]
    assert any(mutant.diagnosis in diagnosis for diagnosis in diagnoses), (
        f"no failure of {mutant.__name__} is diagnosed as {mutant.diagnosis!r}: {diagnoses}"
    )


def test_no_zoo_run_makes_the_suite_raise(killer_runs):
    raised = [line for results in killer_runs.values() for line in suite_exceptions(results)]
    assert not raised, raised


def test_the_reference_passes_every_item_that_kills_a_mutant(killer_runs):
    plan_items = {item.id: item for item in DEFAULT_PLAN}
    items = {}
    for results in killer_runs.values():
        first = next((result for result in results if result.status == "failed"), None)
        if first is not None:
            items[first.item_id] = plan_items[first.item_id]
    assert len(items) >= 8, "the zoo is killed by a variety of checks and cases"
    results = list(run_items(ReferenceCandidate(), list(items.values()), inline(PROFILE)))
    assert [result.item_id for result in results] == list(items)
    bad = [f"{r.item_id}: {r.status} {r.message}" for r in results if r.status != "passed"]
    assert not bad, bad


def _kfac_ref_state() -> dict:
    return {
        "reduction_factor": losses.reduction_factor,
        "hessian_sqrt": losses.hessian_sqrt,
        "sample_labels": losses.sample_labels,
        "backpropagated_vectors": compute.backpropagated_vectors,
        "with_ones": layers.with_ones,
        "registry": dict(layers.REGISTRY),
        "grouped_registry": dict(layers.GROUPED_REGISTRY),
        "rotated_squares": ekfac.rotated_squares,
        "kfac_eigenbasis": ekfac.kfac_eigenbasis,
    }


def test_mutants_leave_kfac_ref_as_they_found_it():
    case = ALL_CASES["reduce-deep-linear[pool-in-middle]"]
    before = _kfac_ref_state()
    answer = kfac_ref.compute_kfac(*_arguments(case))
    for mutant in MUTANTS:
        requests = [Request("type-2", "reduce", bias="joint"), Request("mc", mc_samples=2)]
        if "ekfac" in mutant.capabilities.approximations:
            requests.append(Request("empirical", approximation="ekfac"))
        for request in requests:
            mutant().compute(case.make_problem(), request)
    assert _kfac_ref_state() == before
    again = kfac_ref.compute_kfac(*_arguments(case))
    for layer, factors in answer.items():
        assert factors.A.equal(again[layer].A) and factors.B.equal(again[layer].B)


def _arguments(case):
    problem = case.make_problem()
    return problem.model, problem.loss_func, problem.batches


def _declaring(mutant: type[Mutant], declared: Conventions) -> Mutant:
    candidate = mutant()
    candidate.capabilities = dataclasses.replace(candidate.capabilities, conventions=declared)
    return candidate


DECLARABLE = [
    Conventions(**{field: name})
    for field, registry in (
        ("curvature", conventions.CURVATURE_CONVENTIONS),
        ("empirical_fisher", conventions.EMPIRICAL_FISHER_CONVENTIONS),
    )
    for name in registry
    if name != "tutorial"
]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_no_mutant_survives_by_declaring_a_convention(mutant: type[Mutant]):
    """A bug is no convention: declaring any one known convention leaves the mutant killed,
    by its killers or, where the declaration covers the quantity they check, by the rest of
    the default profile."""
    for declared in DECLARABLE:
        candidate = _declaring(mutant, declared)
        for items in (killer_items(mutant), DEFAULT_PLAN):
            statuses = (r.status for r in run_items(candidate, items, inline(PROFILE)))
            if any(status == "failed" for status in statuses):
                break
        else:
            pytest.fail(f"{mutant.__name__} survives when it declares {declared.declaration()}")
