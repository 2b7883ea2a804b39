"""The stored blocks of a failure, the HTML report built from them, and the ``report`` command."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch

from kfac_conformance.comparison.evidence import MAX_STORED, block_evidence
from kfac_conformance.frontends.cli import main
from kfac_conformance.reports import heatmaps
from kfac_conformance.reports import html as html_report
from kfac_ref.factors import KroneckerFactors

HEATMAP = re.compile(r'<img class="heatmap" alt="[^"]*" src="data:image/png;base64,')
needs_matplotlib = pytest.mark.skipif(
    not heatmaps.available(), reason='matplotlib is absent: pip install -e ".[report]"'
)


def factors(d_in: int, d_out: int, bias: str, seed: int = 0) -> KroneckerFactors:
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(d_in + (bias == "joint"), d_in + (bias == "joint"), generator=generator)
    B = torch.randn(d_out, d_out, generator=generator, dtype=torch.float64)
    return KroneckerFactors(A.double() @ A.double().T, B @ B.T, bias)


@pytest.mark.parametrize(
    ("bias", "dims"), [("none", (3, 4, 0)), ("separate", (3, 4, 4)), ("joint", (3, 4, 4))]
)
def test_small_blocks_are_stored_whole_with_their_tile_sizes(bias, dims):
    block = factors(3, 4, bias)
    expected = block.to_dense().clone()
    expected[0, 1] += 1e-9  # far below float32 resolution of the entries
    evidence = block_evidence("fc", block, expected)
    size = block.to_dense().shape[0]
    assert (evidence["dim_a"], evidence["dim_b"], evidence["bias_rows"]) == dims
    assert (evidence["size"], evidence["stored_size"], evidence["downsampled"]) == (size,) * 2 + (
        False,
    )
    stored = heatmaps.decode(evidence["candidate"], size)
    assert np.allclose(stored, block.to_dense().numpy(), rtol=1e-6)  # float32 storage
    difference = heatmaps.decode(evidence["difference"], size)
    assert difference[0, 1] == pytest.approx(1e-9, rel=1e-6)  # kept, though below resolution
    assert np.count_nonzero(difference) == 1


def test_large_blocks_are_downsampled_and_one_wrong_entry_stays_visible():
    block = factors(10, 10, "separate")  # 110 x 110
    expected = block.to_dense().clone()
    expected[57, 3] += 0.5
    evidence = block_evidence("fc", block, expected)
    assert (evidence["size"], evidence["stored_size"], evidence["downsampled"]) == (
        110,
        MAX_STORED,
        True,
    )
    difference = heatmaps.decode(evidence["difference"], MAX_STORED)
    assert difference.max() == pytest.approx(0.5)  # max-pooled, not averaged away
    assert np.count_nonzero(difference) <= 4  # the cells covering entry (57, 3), pools overlap
    # cell i averages entries floor(i n / m) to ceil((i + 1) n / m) (adaptive pooling)
    stored, dense = heatmaps.decode(evidence["candidate"], MAX_STORED), block.to_dense()
    for i, j in ((0, 0), (20, 41), (63, 63)):
        rows = slice(i * 110 // 64, -(-(i + 1) * 110 // 64))
        columns = slice(j * 110 // 64, -(-(j + 1) * 110 // 64))
        assert stored[i, j] == pytest.approx(dense[rows, columns].mean().item(), rel=1e-6)
    # 64 x 64 float32 = 16 kB, base64 = 22 kB per matrix
    assert len(json.dumps(evidence)) < 3 * 22_000 + 1_000


def test_the_json_report_stores_the_first_failing_layer_of_each_failure(failing_report):
    data = json.loads(failing_report.read_text())
    failed = [r for r in data["results"] if r["status"] == "failed"]
    assert len(failed) == 2 and data["summary"]["passed"] == 1
    for result in failed:
        layer = re.search(r"layer '([^']+)'", result["message"]).group(1)
        assert result["evidence"]["layer"] == layer
    assert all(r["evidence"] is None for r in data["results"] if r["status"] == "passed")
    assert data["candidate"]["capabilities"]["layer_types"] == ["Conv2d", "Linear"]


def test_without_matplotlib_the_page_renders_and_says_how_to_get_pictures(failing_report):
    page = html_report.render(html_report.load(failing_report), draw=False)
    assert not HEATMAP.search(page)
    assert html.escape(heatmaps.INSTALL_HINT) in page
    for needle in ("zoo:ConvPatchesIgnoreGeometry", "Declared capabilities", "exactness"):
        assert needle in page
    assert page.count('class="failure failed"') == 2
    assert "kfac-conformance run --candidate zoo.sharing:ConvPatchesIgnoreGeometry" in page


@needs_matplotlib
def test_every_failure_with_blocks_gets_its_heatmaps(failing_report):
    page = html_report.render(html_report.load(failing_report), draw=True)
    assert len(HEATMAP.findall(page)) == 2
    assert "https://" not in page and "http://" not in page  # nothing to fetch


@needs_matplotlib
def test_a_downsampled_block_is_said_to_be(tmp_path):
    block = factors(10, 10, "separate")
    expected = block.to_dense() * 1.5
    result = {
        "id": "agreement/type-2[c]", "check_id": "agreement/type-2", "case_id": "c",
        "status": "failed", "message": "layer 'fc'", "observed": 0.3, "tolerance": 1e-10,
        "diagnosis": None, "reproduction": {}, "duration_s": 0.1,
        "evidence": block_evidence("fc", block, expected),
    }  # fmt: skip
    report = minimal_report([result])
    page = html_report.render(report, draw=True)
    assert "The 110x110 block is downsampled to 64x64 cells" in page
    assert "kfac_ref&#x27;s block (reference)" not in page  # the label is inside the picture
    assert len(HEATMAP.findall(page)) == 1


@needs_matplotlib
def test_damaged_blocks_cost_their_picture_not_the_page():
    evidence = block_evidence("fc", factors(2, 2, "none"), factors(2, 2, "none", seed=1).to_dense())
    evidence["encoding"] = "float16-base85"
    result = {
        "id": "a/b[c]", "check_id": "a/b", "case_id": "c", "status": "failed",
        "message": "m", "reproduction": {}, "duration_s": 0.0, "evidence": evidence,
    }  # fmt: skip
    page = html_report.render(minimal_report([result]), draw=True)
    assert "The stored blocks cannot be drawn: unknown block encoding" in page


def minimal_report(results: list[dict], version: int = 2) -> dict:
    return {
        "schema_version": version, "suite_version": "0", "complete": True, "state": "complete",
        "interruption": None, "candidate": {"spec": "s", "name": "c", "version": None},
        "torch_version": "t", "device": "cpu", "profile": "quick", "timeout_s": None,
        "isolate": False, "summary": {
            "total": len(results), "ran": len(results), "passed": 0, "skipped": 0, "xfailed": 0,
            "xpassed": 0, "not_run": 0,
            "failed": sum(r["status"] == "failed" for r in results), "error": 0,
        },
        "not_run": [], "unused_expected_failures": [], "results": results,
    }  # fmt: skip


def test_a_version_1_report_still_renders(failing_report):
    data = json.loads(failing_report.read_text())
    data["schema_version"] = 1
    del data["candidate"]["capabilities"]
    for result in data["results"]:
        del result["evidence"]
    page = html_report.render(data, draw=True)
    assert "Not recorded in this report (schema version 1)" in page
    assert page.count('class="failure failed"') == 2 and not HEATMAP.search(page)


def test_the_report_command_writes_html(failing_report, tmp_path):
    output = tmp_path / "out" / "report.html"
    assert main(["report", str(failing_report), "--html", str(output)]) == 0
    assert output.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ('{"schema_version": 99}', "has schema_version 99; this version reads [1, 2"),
    ],
)
def test_the_report_command_rejects_what_it_cannot_read(tmp_path, capsys, content, message):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path), "--html", str(tmp_path / "x.html")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
