"""Run the neutral items against a framework's candidate and write the suite's report.

A framework's runner is a registry of its candidates and a ``__main__`` calling
:func:`kfac_conformance.neutral.cli.main`; see ``conformance/jax/``.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kfac_conformance.contract.expected_failures import ExpectedFailure
from kfac_conformance.neutral import checks, fixtures
from kfac_conformance.neutral import report as reports
from kfac_conformance.neutral.candidate import FrameworkCandidate, Refused, Unavailable
from kfac_conformance.neutral.plan import Item


def load_candidate(spec: str, registry: Mapping[str, str]) -> FrameworkCandidate:
    """A registered name or ``module:attribute`` naming a candidate class; instantiated."""
    target = registry.get(spec, spec)
    module, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(
            f"unknown candidate {spec!r}: use one of {sorted(registry)} or 'module:Class'"
        )
    candidate = getattr(importlib.import_module(module), attribute)()
    if not isinstance(candidate, FrameworkCandidate):
        lacking = [
            name
            for name in (
                "name",
                "version",
                "framework",
                "dtype",
                "conventions",
                "refusal",
                "compute",
            )
            if not hasattr(candidate, name)
        ]
        raise TypeError(f"candidate {spec!r} lacks {lacking} of the FrameworkCandidate protocol")
    return candidate


def run_item(candidate: FrameworkCandidate, item: Item, command: str) -> dict:
    """One item's result; a refusal or what this process lacks is ``skipped``, an exception of
    the candidate ``error``."""
    start = time.perf_counter()
    result = {
        "check_id": item.check_id,
        "case_id": item.case_id,
        "status": "passed",
        "message": "",
        "observed": None,
        "tolerance": None,
        "diagnosis": None,
        "reproduction": {"command": command, "problem": item.case_id},
    }
    case = fixtures.load(item.case_id)
    try:
        outcome = checks.measure(candidate, item, case)
    except Refused as refused:
        result.update(
            status="skipped", message=f"not supported (refused by the candidate): {refused}"
        )
    except Unavailable as unavailable:
        result.update(status="skipped", message=f"not available in this process: {unavailable}")
    except Exception as exception:  # a crash of the candidate is a result, not the run's end
        trace = traceback.format_exception_only(type(exception), exception)
        result.update(status="error", message="candidate raised " + "".join(trace).strip())
    else:
        result.update(outcome)
    result["duration_s"] = time.perf_counter() - start
    return result


def run(
    spec: str,
    candidate: FrameworkCandidate,
    items: Sequence[Item],
    command: str,
    expected: Sequence[ExpectedFailure] = (),
    report_path: Path | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Run ``items``; the report after the last result (rewritten to ``report_path`` after
    every result). ``command`` runs one item when ``--item '<item id>'`` is appended."""
    results: list[dict] = []
    report = reports.document(spec, candidate, items, results)
    for item in items:
        reproduction = f"{command} --candidate {spec} --item '{item.id}'"
        result = run_item(candidate, item, reproduction)
        results.append(reports.apply_expected_failures(result, expected))
        if on_result is not None:
            on_result(results[-1])
        report = reports.document(spec, candidate, items, results)
        if report_path is not None:
            reports.write(report_path, report)
    unused = reports.unused_expected_failures(expected, results)
    report = reports.document(spec, candidate, items, results, unused)
    if report_path is not None:
        reports.write(report_path, report)
    return report
