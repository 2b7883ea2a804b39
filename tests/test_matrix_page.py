"""docs/generate_matrix.py --html: the matrix as a page whose cells link to the HTML reports."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generator():
    spec = importlib.util.spec_from_file_location(
        "generate_matrix", ROOT / "docs/generate_matrix.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(name: str, statuses: list[str]) -> dict:
    results = [
        {"id": f"exactness/x[c{i}]", "check_id": "exactness/x", "case_id": f"c{i}",
         "status": status, "message": "", "observed": 0.5 if status == "failed" else None}
        for i, status in enumerate(statuses)
    ]  # fmt: skip
    summary = {s: statuses.count(s) for s in ("passed", "failed", "xfailed", "xpassed")}
    return {"schema_version": 2, "candidate": {"name": name, "version": "1"}, "profile": "quick",
            "complete": True, "summary": summary, "results": results}  # fmt: skip


def test_cells_link_to_the_reports_that_exist(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "kfac_ref.json").write_text(json.dumps(report("kfac_ref", ["passed"])))
    (reports / "lib.json").write_text(json.dumps(report("lib", ["passed", "failed"])))
    (reports / "lib.html").write_text("<!DOCTYPE html>")
    page = tmp_path / "docs" / "matrix.html"
    page.parent.mkdir()
    arguments = ["--reports", str(reports), "--output", str(tmp_path / "m.md"), "--html", str(page)]
    assert generator().main(arguments) == 0
    text = page.read_text()
    links = re.findall(r'<a href="([^"]+)">([^<]*)</a>', text)
    assert {href for href, _ in links} == {"../reports/lib.html"}  # kfac_ref has no HTML report
    assert ("../reports/lib.html", "1✓ 1✗ (0.5)") in links  # the family row and the check row
    assert ("../reports/lib.html", "lib") in links
    assert "<th>kfac_ref</th>" in text


def test_an_opt_in_profile_adds_its_rows_to_the_candidates_column(tmp_path):
    reports = tmp_path / "reports"
    (reports / "distributed").mkdir(parents=True)
    (reports / "lib.json").write_text(json.dumps(report("lib", ["passed", "failed"])))
    distributed = report("lib", ["skipped", "skipped"])
    distributed["profile"] = "distributed"
    for result in distributed["results"]:
        result["check_id"] = "distributed/equal-shards"
    (reports / "distributed" / "lib.json").write_text(json.dumps(distributed))
    [merged] = generator().load_reports(reports)
    assert merged["profile"] == "quick + distributed"
    assert merged["summary"] == {"passed": 1, "failed": 1, "xfailed": 0, "xpassed": 0}
    text = generator().render([merged])
    assert "| **distributed** | **2–** |" in text
    assert "| **exactness** | **1✓ 1✗ (0.5)** |" in text
