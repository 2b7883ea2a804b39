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


def test_readme_summary_replaces_only_the_text_between_its_markers(tmp_path):
    module = generator()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{module.README_START}\nstale\n{module.README_END}\nrest\n")
    reports = [report("kfac_ref", ["passed", "passed"]), report("lib", ["passed", "failed"])]
    module.write_readme_summary(readme, reports)
    text = readme.read_text()
    assert text.startswith(f"intro\n{module.README_START}\nSummary of") and "stale" not in text
    assert text.endswith(f"{module.README_END}\nrest\n")
    assert "| kfac_ref 1 | quick | 2 | 0 | 0 | 0 | 0 | 0 |" in text
    assert "| lib 1 | quick | 1 | 1 | 0 | 0 | 0 | 0 |" in text


def table_rows(lines: list[str], header: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header line starts with ``header``, by the first
    word of their first cell (the candidate's name)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"no table, or several, with the header {header!r}"
    start = starts[0]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].split()[0]] = cells
    return rows


def test_the_readme_summary_has_the_matrix_s_totals():
    module = generator()
    readme = (ROOT / "README.md").read_text()
    summary = readme.split(module.README_START)[1].split(module.README_END)[0].splitlines()
    matrix = (ROOT / "docs/conformance-matrix.md").read_text().splitlines()
    in_readme = table_rows(summary, "| candidate | profile |")
    in_matrix = table_rows(matrix, "| candidate | version |")
    assert in_readme.keys() == in_matrix.keys()
    for name, cells in in_matrix.items():
        # matrix: candidate, version, conventions, profile, complete, passed .. xfailed, xpassed
        profile, counts = cells[3], cells[5:11]
        readme_counts = in_readme[name][2:7] + [in_readme[name][7].split()[0]]
        assert [in_readme[name][1], *readme_counts] == [profile, *counts], name
