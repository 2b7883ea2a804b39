"""Build ``docs/conformance-matrix.md`` from the JSON reports of ``kfac-conformance run``.

Usage::

    python docs/generate_matrix.py [--reports reports] [--output docs/conformance-matrix.md]
                                   [--html docs/conformance-matrix.html] [--readme README.md]

Every ``<reports>/*.json`` is one candidate's report (schema version 1 or 2, see
``kfac_conformance.reports.report``); its report for an opt-in profile that the matrix also runs,
``<reports>/distributed/<name>.json``, adds its results to the same column. With ``--html``, the same matrix is also written as a page whose
cells link to each candidate's HTML report, ``<reports>/<name>.html`` next to its JSON (written
by ``kfac-conformance run --report-html``; ``nox -s matrix`` does). Rows are the check families, each followed by its checks;
columns are the candidates (``kfac_ref`` first). A cell counts the items of that row by
outcome:

- ``N✓`` passed;
- ``N✗ (e)`` failed, ``e`` the worst observed error among them;
- ``N!`` errors (the candidate or the check crashed);
- ``N⊘`` refused: the candidate declined an input outside its library's interface, either by
  raising ``kfac_conformance.NotSupported`` (a skip in the report) or because the library
  itself raised ``NotImplementedError`` (an error in the report); shown apart so that crashes
  stand out;
- ``N–`` skipped (not claimed, or not applicable);
- ``Nx [ids]`` expected failures, with the finding ids of ``docs/findings.md``;
- ``NX`` passed although expected to fail.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import re
from collections import defaultdict
from pathlib import Path

ORDER = ("passed", "failed", "error", "refused", "skipped", "xfailed", "xpassed")
SYMBOLS = {
    "passed": "✓",
    "failed": "✗",
    "error": "!",
    "refused": "⊘",
    "skipped": "–",
    "xfailed": "x",
    "xpassed": "X",
}
REFUSED_BY_CANDIDATE = "refused by the candidate"
NOT_USED = "not used"  # the torch_version of a report of the JAX or MLX runner
# "<framework>_version" in a report of kfac_conformance.<framework> -> the runner's name
OTHER_FRAMEWORKS = {"jax": "JAX", "mlx": "MLX"}
FINDING_ID = re.compile(r"expected failure \(([A-Z]\d+)")
README_START = "<!-- matrix summary: written by docs/generate_matrix.py --readme -->"
README_END = "<!-- end of the matrix summary -->"
# profiles the matrix runs beside the default one, each into reports/<profile>/ (nox -s matrix)
OPT_IN_PROFILES = ("distributed",)


def outcome(result: dict) -> str:
    if result["status"] == "skipped" and REFUSED_BY_CANDIDATE in result["message"]:
        return "refused"
    if result["status"] == "error" and "NotImplementedError" in result["message"]:
        return "refused"
    return result["status"]


def declared_conventions(report: dict) -> str:
    """The candidate's non-default scale conventions (reports before schema 1's
    ``candidate.conventions`` declared none: the tutorial's)."""
    declared = report["candidate"].get("conventions") or {}
    changed = [f"{field}=`{name}`" for field, name in declared.items() if name != "tutorial"]
    return ", ".join(changed) or "tutorial's"


def merged(report: dict, opt_in: dict) -> dict:
    """One candidate's report with the results of an opt-in profile's report appended."""
    summary = {
        status: report["summary"].get(status, 0) + opt_in["summary"].get(status, 0)
        for status in report["summary"].keys() | opt_in["summary"].keys()
    }
    return {
        **report,
        "profile": f"{report['profile']} + {opt_in['profile']}",
        "complete": report["complete"] and opt_in["complete"],
        "summary": summary,
        "results": report["results"] + opt_in["results"],
    }


def load_reports(directory: Path) -> list[dict]:
    """Every ``<directory>/*.json``, each merged with its candidate's reports of the opt-in
    profiles, ``<directory>/<profile>/*.json`` (their families become rows of their own)."""
    by_name = {}
    for path in sorted(directory.glob("*.json")):
        report = json.loads(path.read_text())
        by_name[report["candidate"]["name"]] = report
    for profile in OPT_IN_PROFILES:
        for path in sorted((directory / profile).glob("*.json")):
            opt_in = json.loads(path.read_text())
            name = opt_in["candidate"]["name"]
            by_name[name] = merged(by_name[name], opt_in) if name in by_name else opt_in
    return sorted(
        by_name.values(),
        key=lambda r: (r["candidate"]["name"] != "kfac_ref", r["candidate"]["name"]),
    )


def finding_ids(results: list[dict]) -> list[str]:
    """The findings named by these expected failures."""
    return sorted({m.group(1) for r in results if (m := FINDING_ID.search(r["message"]))})


def cell(results: list[dict]) -> str:
    if not results:
        return ""
    counts: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        counts[outcome(result)].append(result)
    parts = []
    for status in ORDER:
        items = counts.get(status)
        if not items:
            continue
        text = f"{len(items)}{SYMBOLS[status]}"
        if status == "failed":
            observed = [r["observed"] for r in items if r.get("observed") is not None]
            if observed:
                text += f" ({max(observed):.3g})"
        if status == "xfailed" and (ids := finding_ids(items)):
            text += f" [{', '.join(ids)}]"
        parts.append(text)
    return " ".join(parts)


def rows(reports: list[dict]) -> list[tuple[str, bool]]:
    """(row key, is family) in catalogue order: each family, then its checks."""
    checks: list[str] = []
    for report in reports:
        for result in report["results"]:
            if result["check_id"] not in checks:
                checks.append(result["check_id"])
    ordered: list[tuple[str, bool]] = []
    families: list[str] = []
    for check in checks:
        family = check.split("/", 1)[0]
        if family not in families:
            families.append(family)
    for family in families:
        ordered.append((family, True))
        ordered.extend((c, False) for c in checks if c.split("/", 1)[0] == family)
    return ordered


def grouped_by_row(reports: list[dict]) -> list[dict[str, list[dict]]]:
    """Per report, the results of each row key: a check id, and its family."""
    by_key = []
    for report in reports:
        grouped: dict[str, list[dict]] = defaultdict(list)
        for result in report["results"]:
            grouped[result["check_id"]].append(result)
            grouped[result["check_id"].split("/", 1)[0]].append(result)
        by_key.append(grouped)
    return by_key


def render(reports: list[dict]) -> str:
    names = [r["candidate"]["name"] for r in reports]
    lines = [
        "# Conformance matrix",
        "",
        "Generated by `python docs/generate_matrix.py` from the JSON reports in `reports/`; do not",
        "edit by hand. Findings (ids in brackets) are written up in [findings.md](findings.md).",
        "",
        "Legend: `N✓` passed, `N✗ (e)` failed with worst observed error `e`, `N!` errors,",
        "`N⊘` refused (the candidate raised `NotSupported`, or its library raised",
        "`NotImplementedError`, for an input outside the library's interface), `N–` skipped (not",
        "claimed or not applicable), `Nx [ids]` expected failures, `NX` unexpectedly passed.",
        "Each candidate is checked under the scale conventions it declares",
        "([conventions.md](conventions.md)); the harness converts them, so a declared",
        "convention is never a failure.",
        "",
        "## Candidates",
        "",
        "| candidate | version | declared conventions | profile | complete | passed | failed | errors | refused | skipped | xfailed | xpassed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        summary = report["summary"]
        outcomes = [outcome(r) for r in report["results"]]
        lines.append(
            f"| {report['candidate']['name']} | {report['candidate'].get('version') or '—'} "
            f"| {declared_conventions(report)} | {report['profile']} | {'yes' if report['complete'] else 'NO'} "
            f"| {summary['passed']} | {summary['failed']} | {outcomes.count('error')} "
            f"| {outcomes.count('refused')} | {outcomes.count('skipped')} "
            f"| {summary['xfailed']} | {summary['xpassed']} |"
        )
    torch_versions = sorted({r.get("torch_version", "?") for r in reports} - {NOT_USED})
    versions = f"torch: {', '.join(torch_versions)}."
    # the reports of the runners for other frameworks name their framework instead of torch
    for framework, runner in OTHER_FRAMEWORKS.items():
        found = sorted(
            {r[f"{framework}_version"] for r in reports if r.get(f"{framework}_version")}
        )
        if found:
            versions += f" {framework}: {', '.join(found)} ({runner} runner: the neutral items on stored cases only)."
    lines += ["", versions, "", "## Checks", ""]
    lines.append("| check | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    by_key = grouped_by_row(reports)
    for key, is_family in rows(reports):
        label = f"**{key}**" if is_family else f"&nbsp;&nbsp;`{key}`"
        cells = [cell(grouped.get(key, [])) for grouped in by_key]
        if is_family:
            cells = [f"**{c}**" if c else "" for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def readme_summary(reports: list[dict]) -> str:
    """The candidates' totals, for the README (between README_START and README_END)."""
    lines = [
        f"Summary of `docs/conformance-matrix.md`, generated {datetime.date.today()}:",
        "",
        "| candidate | profile | passed | failed | errors | refused | skipped | expected failures [findings] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        outcomes = [outcome(r) for r in report["results"]]
        xfailed = [r for r in report["results"] if r["status"] == "xfailed"]
        ids = finding_ids(xfailed)
        findings = f" [{', '.join(ids)}]" if ids else ""
        name = f"{report['candidate']['name']} {report['candidate'].get('version') or ''}"
        lines.append(
            f"| {name.strip()} | {report['profile']} | {outcomes.count('passed')} "
            f"| {outcomes.count('failed')} | {outcomes.count('error')} "
            f"| {outcomes.count('refused')} | {outcomes.count('skipped')} "
            f"| {len(xfailed)}{findings} |"
        )
    return "\n".join(lines)


def write_readme_summary(readme: Path, reports: list[dict]) -> None:
    """Replace the text between the README's summary markers with :func:`readme_summary`."""
    text = readme.read_text()
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise SystemExit(f"{readme} needs one {README_START!r} line and one {README_END!r} line")
    before, rest = text.split(README_START)
    after = rest.split(README_END)[1]
    readme.write_text(f"{before}{README_START}\n{readme_summary(reports)}\n{README_END}{after}")


def render_html(reports: list[dict], links: list[str | None]) -> str:
    """The matrix as a self-contained page; ``links[i]`` is the HTML report of ``reports[i]``."""

    def linked(text: str, index: int) -> str:
        href = links[index]
        return f'<a href="{html.escape(href)}">{text}</a>' if href and text else text

    names = [html.escape(r["candidate"]["name"]) for r in reports]
    header = "".join(f"<th>{linked(name, i)}</th>" for i, name in enumerate(names))
    by_key = grouped_by_row(reports)
    body = []
    for key, is_family in rows(reports):
        label = f"<b>{html.escape(key)}</b>" if is_family else f"&nbsp;&nbsp;<code>{key}</code>"
        cells = "".join(
            f"<td>{linked(html.escape(cell(grouped.get(key, []))), i)}</td>"
            for i, grouped in enumerate(by_key)
        )
        body.append(
            f'<tr class="{"family" if is_family else "check"}"><td>{label}</td>{cells}</tr>'
        )
    legend = (
        "N✓ passed, N✗ (e) failed with worst observed error e, N! errors, N⊘ refused, N– skipped, "
        "Nx [ids] expected failures (findings.md), NX unexpectedly passed. Each cell links to the "
        "candidate's HTML report (failures with their diagnosis, reproduction and heatmaps), "
        "written next to its JSON report by nox -s matrix; reports/ is not committed."
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">"
        "<title>Conformance matrix</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .6em}"
        "tr.family{background:#f3f3f3}a{text-decoration:none}"
        "</style></head><body><h1>Conformance matrix</h1>"
        f"<p>Generated by <code>python docs/generate_matrix.py</code>. {html.escape(legend)}</p>"
        f"<table><tr><th>check</th>{header}</tr>{''.join(body)}</table></body></html>\n"
    )


def report_links(directory: Path, reports: list[dict], page: Path) -> list[str | None]:
    """Each report's HTML twin, as a link relative to ``page`` (``None`` when it is absent)."""
    by_name = {}
    for path in sorted(directory.glob("*.json")):
        name = json.loads(path.read_text())["candidate"]["name"]
        if path.with_suffix(".html").is_file():
            by_name[name] = os.path.relpath(path.with_suffix(".html"), page.parent)
    return [by_name.get(report["candidate"]["name"]) for report in reports]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", default="reports", type=Path)
    parser.add_argument("--output", default=Path("docs/conformance-matrix.md"), type=Path)
    parser.add_argument("--html", type=Path, help="also write the matrix as an HTML page here")
    parser.add_argument(
        "--readme", type=Path, help="also write the candidates' totals into this README's summary"
    )
    args = parser.parse_args(argv)
    reports = load_reports(args.reports)
    if not reports:
        parser.error(f"no JSON reports in {args.reports}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(reports))
    print(f"wrote {args.output} ({len(reports)} candidates)")
    if args.html:
        links = report_links(args.reports, reports, args.html)
        args.html.write_text(render_html(reports, links), encoding="utf-8")
        print(f"wrote {args.html} ({sum(link is not None for link in links)} reports linked)")
    if args.readme:
        write_readme_summary(args.readme, reports)
        print(f"wrote the summary in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
