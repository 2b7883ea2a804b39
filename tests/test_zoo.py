"""The harness catches real bugs: every mutant of the zoo fails the default profile.

Each mutant is run on the items of the default plan it names as its killers (the full default
run takes seconds per candidate; the whole zoo against everything is what
``python -m kfac_conformance.reports.kill_matrix`` does). A mutant that survives is a missing check.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from running import inline
from zoo import MUTANTS, Mutant

import kfac_ref
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.plan import Item, case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref import compute, ekfac, layers, losses

PROFILE = "default"
DEFAULT_PLAN = plan(PROFILE, case_entries(PROFILE))


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


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_every_killer_names_items_of_the_default_plan(mutant: type[Mutant]):
    assert mutant.killers
    for killer in mutant.killers:
        assert any(killer in (item.id, item.check.id) for item in DEFAULT_PLAN), killer


@pytest.fixture(scope="module")
def first_kills() -> dict[str, tuple[Item | None, list[str]]]:
    """Per mutant: the first killer item that failed or errored (``None`` if it survived), and
    the outcomes up to it."""
    kills = {}
    for mutant in MUTANTS:
        items = {item.id: item for item in killer_items(mutant)}
        outcomes, killer = [], None
        for result in run_items(mutant(), list(items.values()), inline(PROFILE)):
            outcomes.append(f"{result.item_id}: {result.status} {result.message[:200]}")
            if result.status in ("failed", "error"):
                killer = items[result.item_id]
                break
        kills[mutant.__name__] = (killer, outcomes)
    return kills


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_the_default_profile_kills_the_mutant(mutant: type[Mutant], first_kills):
    killer, outcomes = first_kills[mutant.__name__]
    assert killer is not None, (
        f"{mutant.__name__} survived its killers (a missing check): {outcomes}"
    )


def test_the_reference_passes_every_item_that_kills_a_mutant(first_kills):
    items = {killer.id: killer for killer, _ in first_kills.values() if killer is not None}
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
            if any(status in ("failed", "error") for status in statuses):
                break
        else:
            pytest.fail(f"{mutant.__name__} survives when it declares {declared.declaration()}")
