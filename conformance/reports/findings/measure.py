"""One environment's measurements: its reproduction scripts and its candidates' finding cells.

Run inside the environment (``nox -s findings`` does, once per extra); writes one JSON file that
``render`` merges into docs/findings/measured.json. Standard library only, so that it also runs
in the JAX environment, which has no torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from kfac_conformance.contract.expected_failures import glob_matches
from kfac_conformance.reports.findings.catalogue import FINDINGS
from kfac_conformance.reports.findings.cells import candidate_selections
from kfac_conformance.reports.findings.repros import HEAD_INSTALLS, REPROS

SCRIPT_TIMEOUT_S = 1800
FUZZ_CASES = Path("docs/repro/fuzz")  # the shrunk failures of `kfac-conformance fuzz`
# significant digits kept of an item's observed value and bound (quoted to 3), and of a
# script's numbers (quoted to up to 4): fewer than are stable across runs, and no more
CELL_DIGITS = 4
SCRIPT_DIGITS = 6


class MeasurementError(RuntimeError):
    """A reproduction script or a conformance run that did not produce its numbers."""


def rounded(value: float | str | None, digits: int = CELL_DIGITS) -> float | str | None:
    """``value`` to ``digits`` significant digits (non-finite values stay strings)."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def run_repro(path: Path) -> dict:
    """The script's printed lines and the JSON object of its last line."""
    completed = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
    )
    lines = completed.stdout.rstrip("\n").splitlines()
    if completed.returncode != 0 or not lines:
        raise MeasurementError(
            f"{path} exited with status {completed.returncode}:\n{completed.stderr[-3000:]}"
        )
    try:
        values = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise MeasurementError(
            f"{path}: the last line is not a JSON object: {lines[-1]!r}"
        ) from None
    return {"output": lines[:-1], "values": values}


def summarised(result: dict) -> dict:
    """What the findings quote of one item's result."""
    summary = {"status": result["status"]}
    if result["status"] in ("failed", "error"):
        summary["message"] = result["message"]
        for name in ("observed", "tolerance"):
            if result.get(name) is not None:
                summary[name] = rounded(result[name])
    return summary


def run_suite(candidate: str, options: list[str], jax: bool) -> list[dict]:
    """The results of the conformance run of ``candidate`` with ``options``."""
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        if jax:  # the JAX runner selects by check id; `ran` keeps the selected items
            command = [sys.executable, "-m", "kfac_conformance.jax", "--candidate", candidate]
            command += options
        else:
            command = [sys.executable, "-m", "kfac_conformance.frontends.cli", "run"]
            command += ["--candidate", candidate, *options]
        completed = subprocess.run(
            [*command, "--report-json", str(report)], capture_output=True, text=True
        )
        if completed.returncode not in (0, 1) or not report.is_file():
            raise MeasurementError(
                f"{' '.join(command)} exited with status {completed.returncode}:\n"
                f"{(completed.stdout + completed.stderr)[-3000:]}"
            )
        return json.loads(report.read_text())["results"]


def ran(results: list[dict], selections: list[str]) -> dict[str, dict]:
    """Item id -> summary, for the results of ``selections`` that ran (not skipped)."""
    cells = {}
    for result in results:
        item = f"{result['check_id']}[{result['case_id']}]"
        if result["status"] != "skipped" and any(glob_matches(g, item) for g in selections):
            cells[item] = summarised(result)
    return dict(sorted(cells.items()))


def run_cells(candidate: str, selections: list[str], jax: bool) -> dict[str, dict]:
    if jax:
        checks = {glob.split("[")[0] for glob in selections}
        wildcard = any("*" in check or "?" in check for check in checks)
        options = [] if wildcard else [o for check in sorted(checks) for o in ("--check", check)]
    else:
        options = [option for glob in selections for option in ("--select", glob)]
    return ran(run_suite(candidate, options, jax), selections)


def replay_fuzz_cases(candidate: str, root: Path) -> dict[str, dict]:
    """Case file name -> the items of the whole catalogue that do not pass on its problem."""
    replays = {}
    for path in sorted((root / FUZZ_CASES).glob(f"{candidate}-[A-Z][0-9]*.py")):
        case_id = re.search(r'id="(fuzz-[0-9a-f]+)"', path.read_text())
        if case_id is None:
            raise MeasurementError(f'{path} names no drawn case (id="fuzz-...")')
        options = ["--case", f"{path}:problem", "--select", f"*[{case_id.group(1)}]"]
        results = run_suite(candidate, options, jax=False)
        failing = [r for r in results if r["status"] in ("failed", "error")]
        replays[path.name] = ran(failing, ["*"])
    return replays


def installed_versions() -> dict[str, str]:
    """The version of each pinned distribution of a finding that is installed here."""
    names = {release.split("==")[0] for finding in FINDINGS for release in finding.pinned}
    versions = {}
    for name in sorted(names | {"torch", "jax"}):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def head_version(extra: str) -> dict[str, str]:
    """For an environment of a library's development head: the distribution and its commit."""
    if extra not in HEAD_INSTALLS:
        return {}
    name, _, source = HEAD_INSTALLS[extra][1].partition(" @ ")
    return {name: f"head {source.rsplit('@', 1)[1][:10]}"}


def measure(extra: str, candidates: list[str], jax: bool, root: Path) -> dict:
    """Every measurement this environment can make."""
    selections = candidate_selections()
    return {
        "extra": extra,
        "versions": installed_versions() | head_version(extra),
        "repro": {r.name: run_repro(root / r.path) for r in REPROS if r.extra == extra},
        "cells": {
            name: run_cells(name, selections[name], jax)
            for name in candidates
            if name in selections
        },
        "fuzz": {}
        if jax
        else {
            file: replay
            for name in candidates
            for file, replay in replay_fuzz_cases(name, root).items()
        },
    }
