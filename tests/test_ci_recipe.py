"""docs/ci.md's command lines, read from the page and run against the example adapter.

The library author's repository is simulated in a temporary folder: the example adapter
(``examples/external_candidate.py``) as ``tests/kfac_candidate.py`` and an expected-failures
file. Here the install step's lines are checked: torch first, every later install
constrained to the torch just installed, and the extras exist; tests/test_install_lines.py
runs them, against a local copy of the checkout in a fresh, offline venv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "ci.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == language]


def workflow_steps() -> dict[str, list[str]]:
    """Step name -> its ``run: |`` commands (the workflow is the page's first YAML block)."""
    steps: dict[str, list[str]] = {}
    name, run_indent = None, None
    for line in blocks("yaml")[0].splitlines():
        indent = len(line) - len(line.lstrip())
        if run_indent is not None and (indent > run_indent or not line.strip()):
            if line.strip():
                steps[name].append(line.strip())
            continue
        run_indent = None
        if match := re.match(r"\s*- name: (.+)", line):
            name = match.group(1)
        elif line.strip() == "run: |":
            run_indent, steps[name] = indent, []
    return steps


def author_repository(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "examples" / "external_candidate.py", tmp_path / "tests/kfac_candidate.py")
    (tmp_path / "tests/kfac-xfail.txt").write_text(
        "exactness/type-2-reduce[sequence*]   # cross-position terms in B, see our issue #12\n"
    )
    return tmp_path


def run_shell(command: str, folder: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_workflow_has_the_steps_the_page_describes():
    steps = workflow_steps()
    assert list(steps) == ["Install", "Conformance"]
    workflow = blocks("yaml")[0]
    assert "actions/upload-artifact@v4" in workflow and "if: always()" in workflow
    assert "path: kfac-reports/" in workflow


def test_the_install_step_pins_torch_before_anything_else(tmp_path):
    first, freeze, *installs = workflow_steps()["Install"]
    assert shlex.split(first)[:4] == ["python", "-m", "pip", "install"] and " torch " in first
    # the constraint file holds the torch that is installed (run here as on the runner)
    result = run_shell(freeze, tmp_path)
    assert result.returncode == 0, result.stderr
    import torch

    constraint = (tmp_path / "torch-constraint.txt").read_text().strip()
    assert constraint == f"torch=={torch.__version__}"
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for line in installs:
        words = shlex.split(line)
        assert words[words.index("-c") + 1] == "torch-constraint.txt"
        for word in words:
            if match := re.fullmatch(r"kfac-conformance\[(.+)\]", word):
                assert set(match.group(1).split(",")) <= set(extras)


def test_the_conformance_step_runs_and_writes_every_report(tmp_path):
    repository = author_repository(tmp_path)
    (command,) = workflow_steps()["Conformance"]
    result = run_shell(command, repository, GITHUB_ACTIONS="true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "linear-only-example: " in result.stdout and "::error" not in result.stdout
    assert "warning: expected failure 'exactness/type-2-reduce[sequence*]'" in result.stdout
    reports = repository / "kfac-reports"
    report = json.loads((reports / "conformance.json").read_text())
    assert report["complete"] and report["summary"]["passed"] > 0
    assert (reports / "conformance.html").read_text().startswith("<!DOCTYPE html>")
    suite = ElementTree.parse(reports / "conformance.xml").getroot()
    assert int(suite.get("tests")) == report["summary"]["total"]
    # the page's `report` command, on the JSON just written
    (report_command,) = [b.strip() for b in blocks("bash") if "kfac-conformance report" in b]
    result = run_shell(report_command, repository)
    assert result.returncode == 0, result.stderr
    assert (repository / "conformance.html").is_file()
    assert (repository / "conformance.xml").is_file()


def test_the_pre_commit_hook_runs(tmp_path):
    (hook,) = [b for b in blocks("yaml") if "repos:" in b]
    entry = re.search(r"entry: (.+)", hook).group(1)
    result = run_shell(entry, author_repository(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(complete)" in result.stdout


@pytest.mark.parametrize("name", ["report-screenshot.png"])
def test_the_pictures_the_page_shows_exist(name):
    assert f"]({name})" in PAGE.read_text()
    assert (ROOT / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
