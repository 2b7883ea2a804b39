"""The claim space and its coverage map (issue 20): under the default profile every cell of the
reference's full claim has a value check and an invariance check, the map is placed from the
problems themselves, and ``kfac-conformance coverage`` maps any candidate's claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from running import run_items

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.checks.ekfac.calls import EKFAC_FISHER_TYPES
from kfac_conformance.checks.weight_tying import tied_problem
from kfac_conformance.contract.problem import FISHER_TYPES, Capabilities, Request
from kfac_conformance.coverage import space
from kfac_conformance.coverage.features import describe_call
from kfac_conformance.coverage.recording import (
    RecordingReference,
    compared_layers,
    counted_calls,
    measure_coverage,
)
from kfac_conformance.coverage.render import as_markdown
from kfac_conformance.execution.plan import Item, case_entries
from kfac_conformance.frontends.cli import main
from kfac_conformance.reference_candidate import ReferenceCandidate

PROFILE = "default"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "coverage.md"
FULL_CLAIM = ReferenceCandidate.capabilities

# The MC statistics gaps left, as (pair, dimension, value) cells: none since the Conv1d, Conv3d
# and Embedding cases joined the statistical MC cases with their false-positive rates measured
# (docs/statistics.md). A layer type without a measured statistical case goes here, so the
# test below fails as soon as it is filled, and cannot go stale.
PENDING_MC_STATISTICS: list[tuple[tuple[str, str], str, str]] = []


@pytest.fixture(scope="module")
def reference_map():
    return measure_coverage(FULL_CLAIM, PROFILE)


def test_every_cell_of_the_full_claim_has_a_value_and_an_invariance_check(reference_map):
    assert reference_map.not_passed == []
    assert [hole.describe() for hole in reference_map.holes()] == []


def test_mc_statistics_reach_convolutions_and_shared_axes(reference_map):
    """Few candidates expose the labels they draw, so for MC the statistical checks are the
    value checks that hold everywhere: they must reach every convolution, embedding and
    shared-axis cell."""
    statistical_cells = [
        (pair, dimension, value)
        for pair in (("mc", "kfac"), ("mc", "ekfac"))
        for dimension, value in space.claimed_values(FULL_CLAIM)
        if (dimension == "layer type" and value != "Linear")
        or dimension in ("conv geometry", "pooling")
        or (dimension == "Linear shared axes" and value != "0")
    ]
    without = [
        cell
        for cell in statistical_cells
        if not any(
            reference_map.kinds[check] == "statistical" for check in reference_map.checks(cell)
        )
    ]
    assert sorted(without) == sorted(PENDING_MC_STATISTICS)


def test_docs_coverage_md_is_the_generated_map(reference_map):
    assert DOCS.read_text() == as_markdown(reference_map), (
        "docs/coverage.md is out of date: regenerate it with `nox -s coverage`"
    )


def test_every_exclusion_waives_a_cell_of_the_full_claim():
    cells = [
        (pair, dimension, value)
        for pair in space.claimed_pairs(FULL_CLAIM)
        for dimension, value in space.claimed_values(FULL_CLAIM)
    ]
    for exclusion in space.EXCLUSIONS:
        assert any(
            exclusion.covers(pair, dimension, value, requirement)
            for pair, dimension, value in cells
            for requirement in space.REQUIREMENTS
        ), exclusion.reason


def test_the_excluded_pairs_are_those_the_ekfac_checks_leave_out():
    excluded = {
        pair for pair in space.claimed_pairs(FULL_CLAIM) if space.excluded_pair(pair) is not None
    }
    assert excluded == {(f, "ekfac") for f in FISHER_TYPES if f not in EKFAC_FISHER_TYPES}


def _coordinates(case_id: str) -> set:
    return set(describe_call(ALL_CASES[case_id].make_problem(), Request()).coordinates())


@pytest.mark.parametrize(
    ("case_id", "present", "absent"),
    [
        (
            "conv-expand[last-layer-stride2-pad1-dil2]",
            {("conv geometry", v) for v in space.CONV_GEOMETRY}
            | {("pooling", "per-position loss")},
            {("layer type", "Linear")},
        ),
        (
            "reduce-deep-linear[pool-in-middle]",
            {("pooling", "pooled mid-network"), ("Linear shared axes", "1")},
            {("pooling", "pooled at the end")},
        ),
        ("conv-reduce[stride2-pad1-mean-pool]", {("pooling", "pooled at the end")}, set()),
        ("cnn[relu-ce]", {("pooling", "flattened into features")}, set()),
        ("expand-deep-linear[2-axes]", {("Linear shared axes", "2+")}, set()),
        (
            "deep-linear[mse-mean-uneven-batches]",
            {("batches", "several, unequal sizes"), ("loss terms per datum", "several")},
            {("pooling", "per-position loss"), ("bias mode", "joint")},
        ),
        (
            "identical-inputs-mlp[ce-sum]",
            {("data", "several data"), ("loss terms per datum", "one"), ("batches", "one")},
            {("weight tying", "tied")},
        ),
        ("one-datum-mlp[tanh-mse-sum]", {("data", "one datum")}, {("data", "several data")}),
        (
            "grouped-conv-reduce[depthwise-mean-pool]",
            {("conv groups", "depthwise"), ("conv groups", "1")},
            {("conv groups", "grouped")},
        ),
        (
            "grouped-cnn[tanh-ce]",
            {("conv groups", "grouped"), ("conv groups", "1")},
            {("conv groups", "depthwise")},
        ),
    ],
)
def test_a_call_is_placed_from_its_problem(case_id, present, absent):
    coordinates = _coordinates(case_id)
    assert present <= coordinates
    assert not absent & coordinates


def test_weight_tying_and_the_bias_mode_are_read_off_the_model():
    call = describe_call(tied_problem(), Request("empirical", bias="joint"))
    assert {("weight tying", "tied"), ("bias mode", "joint")} <= set(call.coordinates())
    assert ("weight tying", "tied") not in call.coordinates(["head"])


def _item(check_id: str, case_id: str) -> Item:
    check = next(check for check in ALL_CHECKS if check.id == check_id)
    entry = next(entry for entry in case_entries(PROFILE) if entry.id == case_id)
    return Item(check, entry)


def test_an_exactness_item_counts_only_the_layers_its_case_names_exact():
    item = _item("exactness/type-2-expand", "conv-expand[last-layer-stride2-pad1-dil2]")
    call = describe_call(item.entry.make_problem(), Request("type-2", "expand"))
    coordinates = call.coordinates(compared_layers(item, call))
    assert ("conv geometry", "dilation>1") in coordinates  # layer 1, the exact one
    assert ("conv geometry", "1x1") not in coordinates  # layer 0, not compared
    agreement = _item("agreement/empirical", "conv-expand[last-layer-stride2-pad1-dil2]")
    assert compared_layers(agreement, call) is None


def test_the_kfac_an_ekfac_check_asks_for_counts_for_nothing():
    item = _item("ekfac/kfac-eigenbasis", "mlp[tanh-ce-batch]")
    recorder = RecordingReference(FULL_CLAIM)
    assert [r.status for r in run_items(recorder, [item], PROFILE)] == ["passed"]
    approximations = {call.request.approximation for call in recorder.calls}
    assert approximations == {"kfac", "ekfac"}
    assert {call.request.approximation for call in counted_calls(item, recorder.calls)} == {"ekfac"}


def test_a_narrow_claim_is_mapped_on_its_own_pairs_and_values(tmp_path):
    claim = Capabilities(fisher_types=frozenset({"empirical"}), layer_types=frozenset({"Linear"}))
    mapped = measure_coverage(claim, "quick", "narrow", exposes_labels=False)
    assert {cell[0] for cell in mapped.required_cells()} == {("empirical", "kfac")}
    assert not any(dimension == "conv geometry" for _, dimension, _ in mapped.required_cells())
    tied = (("empirical", "kfac"), "weight tying", "tied")
    assert mapped.checks(tied) == {"weight-tying/empirical-exact-or-raises": 1}
    assert torch.get_num_threads() == 1  # restored to the test-wide setting


NARROW_CANDIDATE = """
from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.reference_candidate import ReferenceCandidate

class Narrow(ReferenceCandidate):
    name = "narrow"
    capabilities = Capabilities(fisher_types=frozenset({FISHER_TYPES}))
"""


def _candidate_file(tmp_path: Path, fisher_types: str) -> str:
    path = tmp_path / "narrow.py"
    path.write_text(NARROW_CANDIDATE.replace("FISHER_TYPES", fisher_types))
    return f"{path}:Narrow"


def test_the_command_writes_the_map_of_a_candidates_claim_as_json(tmp_path):
    output = tmp_path / "map.json"
    spec = _candidate_file(tmp_path, '"forward-only"')
    arguments = ["--candidate", spec, "--profile", "quick", "--format", "json"]
    assert main(["coverage", *arguments, "--output", str(output)]) == 0
    mapped = json.loads(output.read_text())
    assert [(p["fisher_type"], p["approximation"]) for p in mapped["pairs"]] == [
        ("forward-only", "kfac")
    ]
    cells = {(c["dimension"], c["value"]): c for c in mapped["pairs"][0]["cells"]}
    agreement = {"id": "agreement/forward-only", "kind": "reference"}
    assert any(
        {"id": c["id"], "kind": c["kind"]} == agreement for c in cells["loss", "MSELoss"]["checks"]
    )
    assert cells["weight tying", "tied"]["not_required"]  # forward-only has no tied block


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--candidate", "no-such-candidate"], "neither a registered name"),
        (["--candidate", "missing.py:Candidate"], "does not exist"),
        (["--format", "xml"], "invalid choice"),
        (["--profile", "slow"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_a_message(arguments, message, capsys):
    assert main(["coverage", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_claim_without_a_fisher_type_exits_2_with_a_message(tmp_path, capsys):
    assert main(["coverage", "--candidate", _candidate_file(tmp_path, "")]) == 2
    assert "claims no Fisher type" in capsys.readouterr().err
