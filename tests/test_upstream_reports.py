"""The upstream-ready bug reports in docs/upstream/ are complete and index themselves.

Each report is a draft for a library's maintainers (nothing is filed): it must carry every
section the project promises (issue 21), name the development-head commit it was checked
against, quote its reproduction's real output, and have a reproduction script that at least
compiles. The scripts need their library, so they are compiled here, not run.
"""

import py_compile
import re
from pathlib import Path

import pytest

UPSTREAM = Path(__file__).resolve().parent.parent / "docs" / "upstream"
LIBRARIES = ("curvlinops", "asdl", "backpack", "kfac-jax", "laplace", "nngeometry")
REQUIRED_SECTIONS = (
    "## Versions",
    "## Reproduction",
    "## Definition violated",
    "## Expected and observed",
    "## Cause",
)
STATUS_LINE = re.compile(r"^\*\*Status at development head:\*\* ([^\n]+?)\.?$", re.M)
REPORTS = sorted(path for path in UPSTREAM.glob("*.md") if path.name != "README.md")
# every finding docs/findings.md classifies as a library bug (N1 is fixed on nngeometry's main)
BUG_FINDINGS = {"C1", "A1", "B3", "J1", "L1", "N1"}


def library_and_id(report: Path) -> tuple[str, str]:
    library, _, finding = report.stem.rpartition("-")
    return library, finding


def section(text: str, heading: str) -> str:
    start = text.index(heading) + len(heading)
    following = text.find("\n## ", start)
    return text[start : following if following != -1 else len(text)]


def test_every_bug_finding_has_a_report():
    found = {library_and_id(report)[1] for report in REPORTS}
    assert BUG_FINDINGS <= found, f"missing reports for {sorted(BUG_FINDINGS - found)}"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_report_is_named_after_a_known_library_and_finding(report: Path):
    library, finding = library_and_id(report)
    assert library in LIBRARIES, f"{report.name}: unknown library {library!r}"
    assert re.fullmatch(r"[A-Z]\d+", finding), f"{report.name}: finding id {finding!r}"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_report_has_every_required_section(report: Path):
    text = report.read_text(encoding="utf-8")
    assert text.startswith("# "), f"{report.name} has no title line"
    missing = [heading for heading in REQUIRED_SECTIONS if heading not in text]
    assert not missing, f"{report.name} lacks {missing}"
    assert STATUS_LINE.search(text), f"{report.name} states no status at development head"
    unfilled = re.findall(r"\bHEAD_[A-Z0-9_]+\b|\bTODO\b|\bXXX\b", text)
    assert not unfilled, f"{report.name} has unfilled placeholders {unfilled}"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_versions_name_the_development_head_commit(report: Path):
    versions = section(report.read_text(encoding="utf-8"), "## Versions")
    assert re.search(r"\b[0-9a-f]{40}\b", versions), f"{report.name}: no full head commit"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_definition_is_quoted_with_its_source(report: Path):
    definition = section(report.read_text(encoding="utf-8"), "## Definition violated")
    assert re.search(r"^> ", definition, re.M), f"{report.name}: no quotation"
    assert re.search(r"\.py:\d+|https?://", definition), f"{report.name}: quotation unsourced"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_cause_names_file_and_line(report: Path):
    cause = section(report.read_text(encoding="utf-8"), "## Cause")
    assert re.search(r"\w+\.py:\d+", cause), f"{report.name}: cause without file:line"


@pytest.mark.parametrize("report", REPORTS, ids=lambda path: path.stem)
def test_reproduction_script_exists_compiles_and_its_output_is_quoted(report: Path, tmp_path):
    library, finding = library_and_id(report)
    script = UPSTREAM / "repro" / f"{library}_{finding}.py"
    assert script.is_file(), f"{report.name}: no script {script.name}"
    py_compile.compile(str(script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    reproduction = section(report.read_text(encoding="utf-8"), "## Reproduction")
    assert f"repro/{script.name}" in reproduction, f"{report.name} does not name its script"
    assert "DEFECT PRESENT" in reproduction, f"{report.name} quotes no output of its script"
    assert "sys.exit(1)" in script.read_text(encoding="utf-8"), f"{script.name} never fails"


def test_readme_indexes_every_report_with_its_status():
    index = (UPSTREAM / "README.md").read_text(encoding="utf-8")
    for report in REPORTS:
        library, finding = library_and_id(report)
        status = STATUS_LINE.search(report.read_text(encoding="utf-8")).group(1)
        row = next((line for line in index.splitlines() if f"({report.name})" in line), None)
        assert row is not None, f"README.md does not link {report.name}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == finding and cells[1] == library, f"README row for {report.name}"
        assert cells[-1] == status, f"README status of {report.name}: {cells[-1]} != {status}"
