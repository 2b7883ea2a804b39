"""The checks that fill the claim space's cells (issue 20) fail wrong candidates: weight tying
for every Fisher type and approximation, MC against the labels the candidate drew."""

from __future__ import annotations

import dataclasses

import pytest
from running import run_items
from zoo import McNormalisedByM, TiedModuleMixesUses

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.reference_candidate import ReferenceCandidate

PROFILE = "default"


class AnswersTiedModules(TiedModuleMixesUses):
    """Answers a tied module (A from its last use, G from its first) for every Fisher type and
    approximation."""

    capabilities = Capabilities(approximations=frozenset({"kfac", "ekfac"}))


def test_every_weight_tying_check_fails_a_candidate_that_answers_a_tied_module():
    items = plan(PROFILE, case_entries(PROFILE), ["weight-tying/*"])
    assert len(items) == 6
    results = list(run_items(AnswersTiedModules(), items, PROFILE))
    assert [r.status for r in results] == ["failed"] * 6, [r.message for r in results]
    assert all("raise" in r.diagnosis for r in results)
    reference = list(run_items(ReferenceCandidate(), items, PROFILE))
    assert [r.status for r in reference] == ["passed"] * 6


class DrawnLabelsExposed(McNormalisedByM):
    """An MC bug, from a candidate that tells which labels it drew."""

    def sampled_labels(self, problem: Problem, request: Request):
        return ReferenceCandidate().sampled_labels(problem, request)


class OtherLabelsReported(ReferenceCandidate):
    """Right MC KFAC, but the labels it reports are another seed's."""

    def sampled_labels(self, problem: Problem, request: Request):
        return super().sampled_labels(problem, dataclasses.replace(request, seed=request.seed + 1))


@pytest.mark.parametrize("candidate", [DrawnLabelsExposed, OtherLabelsReported])
def test_mc_against_the_drawn_labels_fails_a_wrong_candidate(candidate):
    items = plan(PROFILE, case_entries(PROFILE), ["agreement/mc-drawn-labels[mlp[tanh-ce-batch]]"])
    (result,) = run_items(candidate(), items, PROFILE)
    assert result.status == "failed", result.message
    (reference,) = run_items(ReferenceCandidate(), items, PROFILE)
    assert reference.status == "passed", reference.message


def test_mc_against_the_drawn_labels_skips_a_candidate_that_hides_them():
    items = plan(PROFILE, case_entries(PROFILE), ["agreement/mc-drawn-labels[mlp[tanh-ce-batch]]"])
    (result,) = run_items(McNormalisedByM(), items, PROFILE)
    assert result.status == "skipped" and "sampled_labels" in result.message
