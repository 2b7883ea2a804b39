"""Constant factors are judged across the run: a convention is suggested only if it fits every
item, and a factor is named only by counts that explain every occurrence.

The candidates are ``kfac_ref`` rescaled per layer by a factor of the problem's counts; the
conventions computed from their own formulas are in ``test_conventions.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kfac_conformance import Capabilities, Problem, RunOptions, check_candidate
from kfac_conformance.comparison.factor_names import Occurrence, names
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_conformance.reports.report import summary_text

OPTIONS = RunOptions(profile="default", mode="inline", timeout_s=None)


class Rescaled(ReferenceCandidate):
    """``kfac_ref`` with every loss-dependent block times ``factor(problem, layer)``."""

    capabilities = Capabilities()

    def __init__(self, name: str, factor) -> None:
        self.name, self.factor = name, factor

    def compute(self, problem, request):
        result = super().compute(problem, request)
        if request.fisher_type == "forward-only":
            return result
        return {
            layer: factors.scaled(self.factor(problem, problem.model.get_submodule(layer)))
            for layer, factors in result.items()
        }


def _n_r(problem: Problem) -> tuple[float, float]:
    quantities = problem.scale_quantities()
    return float(quantities["N"]), float(quantities["R"])


def _by_layer_type(problem: Problem, module: nn.Module) -> float:
    N, R = _n_r(problem)
    return N * R if isinstance(module, nn.Linear) else R / N


def _batches_squared(problem: Problem, module: nn.Module) -> float:
    return float(len(problem.batches)) ** 2


def _halved(problem: Problem, module: nn.Module) -> float:
    return 0.5


def _no_suggestion_per_item(report) -> None:
    diagnoses = [r.diagnosis or "" for r in report.results if r.status == "failed"]
    assert diagnoses
    assert not [d for d in diagnoses if "declare" in d or "Conventions(" in d]


@pytest.fixture(scope="module")
def by_layer_type():
    candidate = Rescaled("linear-NR-conv-R/N", _by_layer_type)
    select = ["exactness/type-2-*", "agreement/type-2[*"]
    return check_candidate(candidate, select=select, options=OPTIONS)


def test_a_scale_that_depends_on_the_layer_type_fits_no_convention(by_layer_type):
    summary = by_layer_type.scale_summary()
    assert summary is not None and summary.fitting == []
    assert summary.verdict() == "no declarable convention fits"
    assert "varies with layer type: Linear x N·R, Conv2d x R/N" in summary.depends_on
    assert {row.layer_type for row in summary.rows} == {"Linear", "Conv2d"}
    assert summary.failures >= 10
    _no_suggestion_per_item(by_layer_type)


def test_the_summary_ends_the_text_and_is_in_the_json(by_layer_type):
    text = summary_text(by_layer_type)
    assert "No declarable convention fits" in text
    assert "The factor varies with layer type: Linear x N·R, Conv2d x R/N." in text
    document = json.loads(json.dumps(by_layer_type.to_json()))
    summary = document["scale_summary"]
    assert summary["verdict"] == "no declarable convention fits"
    assert summary["fitting_conventions"] == []
    row = summary["table"][0]
    assert set(row) >= {"factor", "named", "fisher_type", "layer_type", "N", "T", "S", "R", "K"}
    failed = [r for r in document["results"] if r["status"] == "failed"]
    records = [r["scale"]["failure"] for r in failed if r["scale"] and r["scale"]["failure"]]
    assert len(records) == summary["scale_only_failures"]
    for record in records:
        for layer in record["layers"]:
            N, R = record["N"], record["R"]
            expected = N * R if layer["type"] == "Linear" else R / N
            assert layer["factor"] == pytest.approx(expected, rel=1e-9)


def _mse_sum_in_two_batches() -> Problem:
    """K = 2 batches and R = 2 (MSE, "sum"): here K² and R² are both 4, and N = 6."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    batches = [(X[:3], y[:3]), (X[3:], y[3:])]
    return Problem(model, nn.MSELoss(reduction="sum"), batches, ["0", "2"], "mse-sum-2batches")


def test_a_coincidental_factor_is_named_by_the_count_that_explains_every_occurrence():
    candidate = Rescaled("batches-squared", _batches_squared)
    report = check_candidate(
        candidate,
        select=[
            "agreement/type-2[mse-sum-2batches]",
            "agreement/type-2[mlp[tanh-ce-batch]]",
            "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        ],
        cases=[_mse_sum_in_two_batches],
        options=OPTIONS,
    )
    summary = report.scale_summary()
    assert summary is not None and summary.fitting == []
    [coincidence] = [
        row for row in summary.rows if row.items == ["agreement/type-2[mse-sum-2batches]"]
    ]
    assert (coincidence.factor, coincidence.K, coincidence.R) == (4.0, 2, 2.0)
    assert {row.named for row in summary.rows} == {"K^2"}
    assert summary.depends_on == ["is K^2 on every scale-only failure: it varies with K"]


def test_one_problem_cannot_tell_coinciding_counts_apart_and_a_second_one_can():
    coincidence = Occurrence(9.0, {"N": 12, "T": 1, "R": 3, "K": 3})
    assert names([coincidence]) == ["K^2", "R·K", "R^2"]
    elsewhere = Occurrence(4.0, {"N": 16, "T": 1, "R": 1 / 16, "K": 2})
    assert names([coincidence, elsewhere]) == ["K^2"]
    assert names([coincidence, Occurrence(5.0, {"N": 16, "T": 1, "R": 1 / 16, "K": 2})]) == []


def test_a_scale_that_is_no_convention_gets_no_suggestion():
    report = check_candidate(
        Rescaled("halved", _halved),
        select=["exactness/*", "agreement/type-2[*", "agreement/empirical[*"],
        options=OPTIONS,
    )
    summary = report.scale_summary()
    # on MSE with "sum" (R = 2) a half is the convention 'sum-nll': not on the rest of the run
    assert any(row.R == 2.0 and row.loss == "MSELoss" for row in summary.rows)
    assert summary.fitting == [] and summary.verdict() == "no declarable convention fits"
    assert summary.depends_on == [
        "is 1/2 on every scale-only failure: it does not vary with the counts"
    ]
    _no_suggestion_per_item(report)
