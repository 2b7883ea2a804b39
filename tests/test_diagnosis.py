"""Diagnosis: the harness names the pitfall behind a failure, in the result, summary and JSON."""

from __future__ import annotations

import json

import pytest
import torch
from running import inline
from zoo import (
    Float32Internally,
    JointCrossTermsDropped,
    JointOnesFirst,
    KroneckerOrderSwapped,
    McGlobalRng,
    McOneSampleRepeated,
    McTrueLabels,
    ReduceAveragesGrads,
    ReduceSumsInputs,
    ReductionFactorMissing,
    Type2AnswersEmpirical,
)

from kfac_conformance.comparison.blocks import diagnose
from kfac_conformance.comparison.tolerances import layer_pattern, name_factor
from kfac_conformance.contract.conventions import TUTORIAL
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.frontends import cli
from kfac_conformance.reports.scale_summary import summarize
from kfac_ref.factors import KroneckerFactors

DEEP_LINEAR = "exactness/type-2-expand[deep-linear[mse-sum-1batch]]"
POOL_IN_MIDDLE = "exactness/type-2-reduce[reduce-deep-linear[pool-in-middle]]"

# (mutant, item, phrases the diagnosis must contain)
EXPECTED = [
    (
        ReductionFactorMissing,
        "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
        ["off by a constant factor x 18"],
    ),
    (
        KroneckerOrderSwapped,
        DEEP_LINEAR,
        ["Kronecker order swapped: kron(A, B) matches", "wrong only on layers ['1']"],
    ),
    (
        Type2AnswersEmpirical,
        "exactness/type-2-expand[one-datum-mlp[tanh-mse-mean]]",
        ["equals the empirical Fisher block instead"],
    ),
    (JointCrossTermsDropped, DEEP_LINEAR, ["weight-bias cross terms are zero"]),
    (JointOnesFirst, DEEP_LINEAR, ["ones row misplaced", "moved last"]),
    (
        ReduceSumsInputs,
        POOL_IN_MIDDLE,
        [
            "wrong only on layers ['0', '1'] (right on ['3', '4'])",
            "exactly the layers with shared axes (S=4, S=4)",
        ],
    ),
    (ReduceAveragesGrads, POOL_IN_MIDDLE, ["x 0.0625", "exactly the layers with shared axes"]),
    (Float32Internally, DEEP_LINEAR, ["float32 round-off level"]),
    (McTrueLabels, "mc/unbiased[mlp[tanh-ce-batch]]", ["the MC answer is the empirical Fisher"]),
    (McTrueLabels, "mc/seeds-differ[mlp[tanh-ce-batch]]", ["the MC answer is the empirical"]),
    (McGlobalRng, "mc/seed-reproducible[mlp[tanh-ce-batch]]", ["from the global generator"]),
    (
        McOneSampleRepeated,
        "mc/sqrt-m-convergence[mlp[tanh-ce-batch]]",
        ["the samples of a datum are one draw repeated"],
    ),
]


def _item(item_id: str):
    [item] = [item for item in plan("default", case_entries("default")) if item.id == item_id]
    return item


@pytest.mark.parametrize(
    "mutant, item_id, phrases", EXPECTED, ids=[mutant.__name__ for mutant, *_ in EXPECTED]
)
def test_the_diagnosis_names_the_pitfall(mutant, item_id, phrases):
    [result] = run_items(mutant(), [_item(item_id)], inline())
    assert result.status == "failed", result.message
    for phrase in phrases:
        assert phrase in (result.diagnosis or ""), result.diagnosis


def test_a_diagnosis_suggests_no_declaration_and_the_run_summary_names_the_factor():
    [result] = run_items(ReduceAveragesGrads(), [_item(POOL_IN_MIDDLE)], inline())
    assert "declare" not in result.diagnosis and " = " not in result.diagnosis
    summary = summarize([result], TUTORIAL)
    # the wrong layers are the two with S = 4 shared positions; one problem cannot tell 1/S²
    # from 1/(4 S)
    assert [(row.layer_type, row.S, row.factor) for row in summary.rows] == [("Linear", 4, 0.0625)]
    assert summary.rows[0].named == "1/S^2 or 1/(4·S)"
    assert summary.fitting == []


def test_the_diagnosis_is_in_the_summary_and_the_json_report(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = cli.main(
        [
            "run",
            "--candidate",
            "zoo:KroneckerOrderSwapped",
            "--select",
            DEEP_LINEAR,
            "--report-json",
            str(report),
            "--quiet",
        ]
    )
    assert code == 1
    assert "diagnosis: Kronecker order swapped" in capsys.readouterr().out
    [result] = json.loads(report.read_text())["results"]
    assert result["diagnosis"].startswith("Kronecker order swapped")


def test_name_factor_lists_every_matching_count():
    assert (
        name_factor(6.0, {"N": 3, "T": 2, "K": 1}) == "N*T (N = 3 data, T = 2 loss terms per datum)"
    )
    assert (
        name_factor(0.25, {"N": 2, "T": 4})
        == "1/N^2 or 1/T (N = 2 data, T = 4 loss terms per datum)"
    )
    assert name_factor(7.0, {"N": 2, "T": 3}) is None


def test_layer_pattern_needs_some_layers_right():
    assert layer_pattern({"0": 1.0, "1": 1.0}, 1e-10, {"0": 4, "1": 1}) is None
    assert (
        layer_pattern({"0": 1.0, "1": 0.0}, 1e-10, {})
        == "wrong only on layers ['0'] (right on ['1'])"
    )


def test_no_diagnosis_is_invented_for_an_unstructured_error():
    generator = torch.Generator().manual_seed(0)
    A, B = (torch.randn(3, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    factors = KroneckerFactors(A @ A.T, B @ B.T)
    exact = factors.to_dense() + 0.1 * torch.randn(9, 9, generator=generator, dtype=torch.float64)
    assert diagnose(factors, exact, 1e-10) is None
