"""The neutral runner's report, in the suite's JSON schema (``kfac_conformance.reports.report``,
schema version 1), so that ``docs/generate_matrix.py`` reads it like any other.

``torch_version`` is ``"not used"``; ``"<framework>_version"`` (e.g. ``jax_version``) and the
declared ``conventions`` are added. Statuses, and the messages of refusals and expected
failures, are worded as the PyTorch runner words them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kfac_conformance.contract.expected_failures import ExpectedFailure, match
from kfac_conformance.neutral.candidate import FrameworkCandidate
from kfac_conformance.neutral.plan import Item

SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
PROFILE = "stored-cases"


def result_id(result: dict) -> str:
    return f"{result['check_id']}[{result['case_id']}]"


def apply_expected_failures(result: dict, expected: Sequence[ExpectedFailure]) -> dict:
    """A failed or errored result that an entry names is ``xfailed``, a passed one ``xpassed``."""
    entry = match(list(expected), result_id(result), result["check_id"])
    if entry is None:
        return result
    if result["status"] in ("failed", "error"):
        result["message"] = f"expected failure ({entry.reason}): {result['message']}"
        result["status"] = "xfailed"
    elif result["status"] == "passed":
        result["status"] = "xpassed"
        result["message"] = f"expected to fail ({entry.reason}) but passed"
    return result


def unused_expected_failures(
    expected: Sequence[ExpectedFailure], results: Sequence[dict]
) -> list[str]:
    used = {
        entry.pattern
        for entry in expected
        if any(entry.matches(result_id(r), r["check_id"]) for r in results)
    }
    return [entry.pattern for entry in expected if entry.pattern not in used]


def distribution_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def document(
    spec: str,
    candidate: FrameworkCandidate,
    items: Sequence[Item],
    results: list[dict],
    unused: Sequence[str] = (),
) -> dict:
    """The report after ``results`` (a prefix of the results of ``items``)."""
    done = {result_id(r) for r in results}
    not_run = [item.id for item in items if item.id not in done]
    summary = {"total": len(items), "ran": len(results)}
    summary.update({status: sum(r["status"] == status for r in results) for status in STATUSES})
    summary["not_run"] = len(not_run)
    complete = not not_run
    return {
        "schema_version": SCHEMA_VERSION,
        "suite_version": distribution_version("kfac-conformance") or "unknown",
        "complete": complete,
        "state": "complete" if complete else "running",
        "interruption": None,
        "candidate": {
            "spec": spec,
            "name": candidate.name,
            "version": candidate.version,
            "conventions": candidate.conventions.describe(),
            "dtype": candidate.dtype,
        },
        "torch_version": "not used",
        f"{candidate.framework}_version": distribution_version(candidate.framework),
        "device": "cpu",
        "profile": PROFILE,
        "timeout_s": None,
        "isolate": False,
        "summary": summary,
        "not_run": not_run,
        "unused_expected_failures": list(unused),
        "results": [{"id": result_id(r), **r} for r in results],
    }


def write(path: Path, report: dict) -> None:
    """Atomically, as ``kfac_conformance.reports.report.Report.write`` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report, indent=1, default=str))
    os.replace(temporary, path)
