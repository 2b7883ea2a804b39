"""The ``scale`` section of ``benchmarks/run.py``: the scale profile's time and peak memory per
item, and how its cost grows with the width of a deep linear network.

- ``profile``: ``kfac-conformance run --candidate kfac_ref --profile scale`` as a subprocess
  (wall time against the 5-minute budget), with every item's duration and peak memory from
  its JSON report (:mod:`kfac_conformance.execution.peak_memory` says how peaks are read);
- ``widths``: the profile's checks on a deep linear network ``16 -> w -> w -> 4`` with MSE
  (the profile's data: 160 data) for ``w`` in ``WIDTHS``, run in this process, one item at
  a time: time and peak memory per item, and the memory a dense block of the widest layer
  would take instead.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kfac_conformance.cases.scale import ScaleCase, deep_linear
from kfac_conformance.checks.scale import scale_checks
from kfac_conformance.execution.options import RunOptions
from kfac_conformance.execution.plan import Item
from kfac_conformance.execution.runner import run_items
from kfac_conformance.reference_candidate import ReferenceCandidate

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (1024, 2048, 4096)
BUDGET_S = 300
MIB = 2**20


def _item_row(result: dict) -> dict:
    details = result.get("details") or {}
    peak = details.get("peak_memory_bytes")
    return {
        "item": result["id"],
        "status": result["status"],
        "seconds": round(result["duration_s"], 2),
        "parameters": details.get("parameters"),
        "peak_memory_mib": None if peak is None else round(peak / MIB, 1),
        "observed": result["observed"],
        "tolerance": result["tolerance"],
    }


def bench_profile() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "scale.json"
        command = [
            sys.executable,
            "-m",
            "kfac_conformance.frontends.cli",
            "run",
            "--candidate",
            "kfac_ref",
            "--profile",
            "scale",
            "-q",
            "--report-json",
            str(report),
        ]
        start = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        rows = [_item_row(result) for result in json.loads(report.read_text())["results"]]
    print(
        f"scale profile (kfac_ref): {wall:.1f} s wall, budget {BUDGET_S} s, exit {completed.returncode}"
    )
    for row in rows:
        print(
            f"  {row['item']}: {row['status']}, {row['seconds']:.1f} s, "
            f"P = {row['parameters']}, peak {row['peak_memory_mib']} MiB"
        )
    return {"wall_s": wall, "budget_s": BUDGET_S, "exit_code": completed.returncode, "items": rows}


def width_case(width: int) -> ScaleCase:
    widths = (16, width, width, 4)
    return ScaleCase(
        id=f"deep-linear[{width}-{width}]",
        architecture=functools.partial(deep_linear, widths),
        datum_shape=(16,),
        num_data=160,
        seed=2300,
        exact=dict.fromkeys(("type-2/expand", "type-2/reduce"), ("0", "1", "2")),
    )


def bench_widths() -> list[dict]:
    rows = []
    options = RunOptions(profile="scale", mode="inline", timeout_s=None)
    for width in WIDTHS:
        case = width_case(width)
        items = [Item(check, entry) for check in scale_checks([case]) for entry in check.own_cases]
        for result in run_items(ReferenceCandidate(), items, options):
            row = _item_row(result.to_json())
            # the dense float64 block of the middle layer (width x width weights)
            row["dense_block_mib"] = round((width * width) ** 2 * 8 / MIB)
            row["width"] = width
            rows.append(row)
            print(
                f"width {width}: {row['item']}: {row['status']}, {row['seconds']:.1f} s, "
                f"peak {row['peak_memory_mib']} MiB (a dense block: {row['dense_block_mib']} MiB)"
            )
    return rows


def bench_scale() -> dict:
    return {"profile": bench_profile(), "widths": bench_widths()}
