"""docs/findings.md against its records, its expected-failure entries and its measurements.

No library is needed: the page is re-rendered from docs/findings/measured.json, the last
measurement `nox -s findings` stored.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from kfac_conformance.reports.findings import store
from kfac_conformance.reports.findings.catalogue import FINDINGS, FINDINGS_BY_ID, HEADS
from kfac_conformance.reports.findings.cells import FINDING_ID, finding_cells
from kfac_conformance.reports.findings.measure import rounded
from kfac_conformance.reports.findings.records import validate
from kfac_conformance.reports.findings.render import PLACEHOLDER, RenderError, render
from kfac_conformance.reports.findings.repros import HEAD_INSTALLS, REPROS

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "findings" / "measured.json"
TEMPLATE = ROOT / "docs" / "findings" / "template.md"
PAGE = ROOT / "docs" / "findings.md"


def test_every_finding_named_by_an_expected_failure_is_a_record():
    unknown = sorted(set(finding_cells()) - set(FINDINGS_BY_ID))
    assert not unknown, f"xfail entries name findings without a record: {unknown}"


def test_every_expected_failure_entry_names_a_finding():
    for path in sorted((ROOT / "conformance" / "adapters" / "xfail").glob("*.txt")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            pattern, _, reason = line.partition("#")
            if pattern.strip():
                assert FINDING_ID.search(reason), f"{path.name}:{number} names no finding"


def test_every_record_is_referenced_by_an_expected_failure_or_a_reproduction():
    cells = finding_cells()
    for finding in FINDINGS:
        assert finding.id in cells or finding.repros, finding.id


def test_every_reproduction_and_upstream_path_of_a_record_is_well_formed():
    measured_scripts = {repro.path for repro in REPROS}
    for finding in FINDINGS:
        for path in finding.repros:
            assert (ROOT / path).is_file(), f"{finding.id}: {path} does not exist"
            assert path in measured_scripts, f"{finding.id}: {path} is not in repros.REPROS"
        if finding.upstream:
            assert re.fullmatch(rf"docs/upstream/[a-z-]+-{finding.id}\.md", finding.upstream)
            assert (ROOT / finding.upstream).is_file(), f"{finding.id}: no {finding.upstream}"


def test_every_measured_script_exists_and_prints_json_last():
    for repro in REPROS:
        source = (ROOT / repro.path).read_text()
        assert "print(json.dumps(" in source, f"{repro.path} prints no JSON line"


def test_the_records_pass_their_own_validation():
    validate(FINDINGS, HEADS)
    assert all(re.fullmatch(r"[0-9a-f]{40}", head.commit) for head in HEADS.values())


def test_a_head_environment_installs_the_head_that_was_read():
    for name, (_, requirement) in HEAD_INSTALLS.items():
        head = HEADS[name.removesuffix("-head")]
        assert requirement.endswith(f"github.com/{head.repository}@{head.commit}"), name


def test_a_malformed_record_is_refused_with_its_id():
    bug_without_report = dataclasses.replace(FINDINGS_BY_ID["C1"], upstream="")
    with pytest.raises(ValueError, match="finding C1: a bug needs its upstream report"):
        validate((bug_without_report,), HEADS)
    unknown = dataclasses.replace(FINDINGS_BY_ID["K1"], classification="feature")
    with pytest.raises(ValueError, match="finding K1: classification 'feature'"):
        validate((unknown,), HEADS)


def test_the_page_is_the_rendering_of_the_template_and_the_last_measurement():
    measured = json.loads(MEASURED.read_text())
    expected = render(TEMPLATE.read_text(), measured)
    assert PAGE.read_text() == expected, "docs/findings.md is stale: run `nox -s findings`"
    assert MEASURED.read_text() == store.dumps(measured), "measured.json is not in stable form"


def test_every_finding_has_its_section_and_every_reproduction_its_output():
    template = TEMPLATE.read_text()
    placeholders = {match.group(1) for match in PLACEHOLDER.finditer(template)}
    for finding in FINDINGS:
        assert f"finding:{finding.id}" in placeholders, finding.id
    for repro in REPROS:
        assert f"repro:{repro.name}" in placeholders, repro.name


def test_the_template_quotes_no_figure_outside_a_placeholder():
    """A decimal figure in the prose would be typed by hand: every one must come from the
    measurements (integers such as 16 samples or 3 layers are definitions, not measurements)."""
    prose = PLACEHOLDER.sub("", TEMPLATE.read_text())
    code_spans = re.sub(r"`[^`]*`", "", prose)
    figures = re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?(?![\w.])", code_spans)
    versions = {"0.1a4", "0.1a5"}
    assert not [f for f in figures if f not in versions], figures


def test_a_missing_measurement_names_the_placeholder():
    with pytest.raises(RenderError, match=r"\{\{value:asdl_mc_scale:ratio_M4:.3f\}\}"):
        render("{{value:asdl_mc_scale:ratio_M4:.3f}}", store.load(Path("/nonexistent")))


def test_merging_a_measurement_replaces_that_environment_only_and_rounds():
    measured = {
        "environments": {"asdl": {"versions": {"asdfghjkl": "0.1a5"}}},
        "repro": {"asdl_mc_scale": {"output": ["old"], "values": {"ratio_M4": 0.25}}},
        "cells": {"asdl": {}},
        "fuzz": {},
    }
    raw = {
        "extra": "backpack",
        "versions": {"backpack-for-pytorch": "1.7.1"},
        "repro": {"backpack_kfra_float64": {"output": ["new"], "values": {"x": 1 / 3}}},
        "cells": {"backpack-kfra": {}},
        "fuzz": {},
    }
    merged = store.merged(measured, raw)
    assert set(merged["environments"]) == {"asdl", "backpack"}
    assert merged["repro"]["asdl_mc_scale"]["output"] == ["old"]
    assert merged["repro"]["backpack_kfra_float64"]["values"]["x"] == rounded(1 / 3, 6) == 0.333333
