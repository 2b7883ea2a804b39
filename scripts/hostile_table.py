"""The table of docs/robustness.md: every listed hostile candidate under the quick profile.

Run from the repository root: ``python scripts/hostile_table.py [NAME ...]``. Each candidate of
``tests/hostile.py`` runs as a user would start it (``kfac-conformance run --profile quick
--timeout 10``, supervised), one after the other; the script prints one markdown row per
candidate (wall time, counts by status, whether the report is complete) and the load average
at the start, since the walls depend on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = [
    "Raising",
    "Hanging",
    "NaNFactor",
    "WrongShape",
    "NumpyFactor",
    "NotAMapping",
    "ChangesDefaultDtype",
    "ReseedsGlobalRNG",
    "ExitingProcess",
    "Segfaulting",
    "LeavesMutatingThread",
    "MutatesData",
]
STATUSES = ("passed", "failed", "error", "skipped")


def row(name: str, folder: Path) -> str:
    report = folder / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "kfac_conformance.frontends.cli",
        "run",
        "--profile",
        "quick",
        "--timeout",
        "10",
        "--candidate",
        f"tests/hostile.py:{name}",
        "--report-json",
        str(report),
        "-q",
    ]
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    data = json.loads(report.read_text())
    counts = {status: 0 for status in STATUSES}
    for result in data["results"]:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    state = f"{data['state']}, exit {finished.returncode}"
    cells = " | ".join(str(counts[status]) for status in STATUSES)
    return f"| `{name}` | {wall:.0f} s | {cells} | {len(data['results'])} | {state} |"


def main(names: list[str]) -> None:
    print(f"load average at the start: {os.getloadavg()[0]:.1f}\n")
    print(
        "| candidate (`tests/hostile.py`) | wall | passed | failed | errors | skipped | items | report |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in names or CANDIDATES:
            print(row(name, Path(folder)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
