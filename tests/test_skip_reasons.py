"""A skip names the first claim the item really needs and the candidate lacks: the check's own
needs, then the problem's (layer types, loss, reduction, device, dtype, batches), then the
request's (fisher type, flavour, bias mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from running import inline
from torch import nn

from kfac_conformance import load_candidate
from kfac_conformance.api import check_candidate
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.contract.problem import Capabilities, Request
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.frontends.cli import main
from kfac_conformance.reference_candidate import ReferenceCandidate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = f"{ROOT / 'examples' / 'external_candidate.py'}:candidate"  # Linear only
CONV2D = "not supported: layer types ['Conv2d']"
# claims the example lacks whatever the problem: the checks that need them name them first
CHECK_NEEDS = {
    "not supported: approximations ['ekfac']",
    "not supported: fisher types ['mc']",
    "not supported: fisher types ['forward-only']",
    "CUDA is not available on this machine",
}
ENTRIES = case_entries("default")
CONV_CASES = {
    entry.id
    for entry in ENTRIES
    if any(isinstance(module, nn.Conv2d) for module in entry.make_problem().model.modules())
}


@pytest.fixture(scope="module")
def conv_results():
    items = [item for item in plan("default", ENTRIES) if item.entry.id in CONV_CASES]
    return list(run_items(load_candidate(EXAMPLE), items, inline()))


def test_the_example_is_skipped_on_convolutions_for_the_conv2d_layer(conv_results):
    assert len(CONV_CASES) >= 3
    assert {result.status for result in conv_results} == {"skipped"}
    assert {r.message for r in conv_results} - CHECK_NEEDS == {CONV2D}
    by_family: dict[str, set[str]] = {}
    for result in conv_results:
        by_family.setdefault(result.check_id.split("/")[0], set()).add(result.message)
    # these once said that none of the fisher types ['type-2', 'empirical'] was claimed, that
    # both bias modes were needed, or that no fisher type was claimed
    for family in ("invariance", "structure", "side-effects", "exactness"):
        assert by_family[family] == {CONV2D}, family
    assert CONV2D in by_family["agreement"]


def test_the_terminal_groups_the_skips_by_reason(capsys):
    code = main(
        ["run", "--candidate", EXAMPLE, "--select", "invariance/*[conv-*]", "-q"]
        + ["--select", "ekfac/structure[conv-*]"]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("SKIPPED (25) by reason:")
    assert lines[start + 1 : start + 3] == [
        f"  20  {CONV2D}",
        "   5  not supported: approximations ['ekfac']",
    ]


def test_the_problem_is_judged_before_the_request():
    capabilities = Capabilities(
        layer_types=frozenset({"Linear"}),
        fisher_types=frozenset({"type-2"}),
        dtypes=frozenset({"float64"}),
    )
    conv = ALL_CASES["conv-expand[1x1-per-pixel-mse]"].make_problem()
    assert capabilities.unsupported(conv, Request("mc")) == CONV2D
    linear = ALL_CASES["deep-linear[mse-sum-1batch]"].make_problem().to(dtype=torch.float32)
    assert capabilities.unsupported(linear, Request("mc")) == "not supported: dtypes ['float32']"
    assert capabilities.unsupported_problem(linear.to(dtype=torch.float64)) is None
    assert capabilities.unsupported(linear, Request("mc")) == "not supported: fisher types ['mc']"


class ReduceOnly(ReferenceCandidate):
    name = "reduce-only"
    capabilities = Capabilities(flavours=frozenset({"reduce"}))


def test_a_request_claim_is_named_when_the_problem_is_claimed():
    report = check_candidate(
        ReduceOnly(),
        profile="quick",
        select=["side-effects/none[deep-linear*]", "structure/*[deep-linear*]"],
        options=inline("quick"),
    )
    assert {(r.status, r.message) for r in report.results} == {
        ("skipped", "not supported: flavours ['expand']")
    }
