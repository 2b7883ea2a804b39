"""The report in the formats CI systems read: GitHub Actions annotations and JUnit XML.

Both are built from the JSON report (any schema version), so ``kfac-conformance run`` and
``kfac-conformance report`` write the same thing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

FAILING = ("failed", "error")


def _escape_data(text: str) -> str:
    """GitHub's workflow-command escaping of a message (``%``, CR and LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _short(number: float | str | None) -> str:
    """Three significant digits; "inf" and "nan" are stored as strings and shown as they are."""
    return f"{number:.3g}" if isinstance(number, (int, float)) else str(number)


def _details(result: dict) -> list[str]:
    """The message, observed error, diagnosis and reproduction command that a result has."""
    lines = [result["message"].strip()]
    if result.get("observed") is not None:
        observed, tolerance = (_short(result[key]) for key in ("observed", "tolerance"))
        lines.append(f"observed error {observed}, tolerance {tolerance}")
    if result.get("diagnosis"):
        lines.append(f"diagnosis: {result['diagnosis']}")
    command = (result.get("reproduction") or {}).get("command")
    if command:
        lines.append(f"reproduce: {command}")
    return [line for line in lines if line]


def github_annotations(report: dict) -> list[str]:
    """One ``::error`` line per failed or errored item: check id, case, observed error,
    diagnosis and the reproduction command, so the annotation alone says what to run."""
    lines = []
    for result in report["results"]:
        if result["status"] not in FAILING:
            continue
        parts = [
            f"{result['status']}: {result['check_id']} on case {result['case_id']}",
            *_details(result),
        ]
        title = _escape_property(f"kfac-conformance {result['id']}")
        lines.append(f"::error title={title}::{_escape_data(chr(10).join(parts))}")
    if not report.get("complete", True):
        lines.append(
            "::error title=kfac-conformance run incomplete::"
            + _escape_data(f"{len(report.get('not_run', []))} items did not run")
        )
    return lines


def junit_xml(report: dict) -> str:
    """One ``testcase`` per item (``classname`` the check id, ``name`` the case): failed as
    ``failure``, error as ``error``, skipped and expected failures as ``skipped``, items that
    did not run (an interrupted run) as ``error``."""
    name = report["candidate"]["name"]
    suite = ElementTree.Element("testsuite", name=f"kfac-conformance[{name}]")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for result in report["results"]:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=result["check_id"],
            name=result["case_id"],
            time=f"{result.get('duration_s', 0.0):.3f}",
        )
        total_time += result.get("duration_s", 0.0)
        counts["tests"] += 1
        text = "\n".join(_details(result))
        first_line = result["message"].strip().splitlines()[0] if result["message"].strip() else ""
        status = result["status"]
        if status == "failed":
            counts["failures"] += 1
            ElementTree.SubElement(case, "failure", message=first_line).text = text
        elif status == "error":
            counts["errors"] += 1
            ElementTree.SubElement(case, "error", message=first_line).text = text
        elif status in ("skipped", "xfailed"):
            counts["skipped"] += 1
            ElementTree.SubElement(case, "skipped", message=f"{status}: {first_line}")
        elif status == "xpassed":
            ElementTree.SubElement(case, "system-out").text = result["message"]
    for item in report.get("not_run", []):
        check_id, _, case_id = item.partition("[")
        case = ElementTree.SubElement(suite, "testcase", classname=check_id, name=case_id[:-1])
        counts["tests"] += 1
        counts["errors"] += 1
        ElementTree.SubElement(case, "error", message="not run: the run was interrupted")
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{total_time:.3f}")
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(
        suite, encoding="unicode"
    )
