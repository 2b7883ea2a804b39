"""The JSON report as one self-contained HTML page: no network, opens in any browser.

Built from the versioned JSON (:mod:`kfac_conformance.reports.report`), so a report of any schema
version renders; version 1 reports have no stored blocks and so no heatmaps. The page shows:

- the candidate, its version, its declared capabilities and conventions, the run's settings;
- a summary per check family;
- every failure, error and expected failure with its message, observed error, diagnosis,
  reproduction command and, where blocks were stored, the heatmaps of
  :mod:`kfac_conformance.reports.heatmaps` as PNG data URIs;
- every item in a table that buttons filter by status (a few lines of inline script).

A Content-Security-Policy forbids every load but inline style, inline script and ``data:``
images, so the page cannot reach the network even by mistake.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

from kfac_conformance.contract.outcomes import STATUSES
from kfac_conformance.reports import heatmaps
from kfac_conformance.reports.report import SCHEMA_VERSION

# every version so far only added fields, so a reader of the newest reads them all
SUPPORTED_SCHEMA_VERSIONS = tuple(range(1, SCHEMA_VERSION + 1))
DETAILED = ("failed", "error", "xpassed", "xfailed")
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; max-width: 1300px; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: 600; border-radius: 3px; padding: 0 0.4em; }
.st-passed { color: #1a7f37; } .st-failed, .st-error { color: #c62828; }
.st-skipped { color: #777; } .st-xfailed { color: #8a6d00; } .st-xpassed { color: #6a1b9a; }
.banner { padding: 0.6em 1em; border-radius: 4px; margin: 0.8em 0; }
.banner.bad { background: #fdecea; } .banner.good { background: #e8f5e9; }
.banner.note { background: #fff8e1; }
pre { background: #f6f8fa; padding: 0.5em; white-space: pre-wrap; margin: 0.3em 0; }
.failure { border: 1px solid #ddd; border-left: 5px solid #c62828; padding: 0.3em 1em;
           margin: 1em 0; }
.failure.xfailed { border-left-color: #d4a500; } .failure.xpassed { border-left-color: #6a1b9a; }
img.heatmap { max-width: 100%; border: 1px solid #eee; }
#filters button { margin: 0 0.3em 0.3em 0; padding: 0.2em 0.7em; cursor: pointer; }
#filters button[aria-pressed="false"] { opacity: 0.4; text-decoration: line-through; }
.columns { display: grid; grid-template-columns: auto auto; gap: 0 3em; justify-content: start; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; }
dl.settings dt { font-weight: 600; } dl.settings dd { margin: 0; }
"""
_SCRIPT = """
document.querySelectorAll('#filters button').forEach(function (button) {
  button.addEventListener('click', function () {
    var shown = button.getAttribute('aria-pressed') !== 'true';
    button.setAttribute('aria-pressed', shown ? 'true' : 'false');
    document.querySelectorAll('#items tr[data-status="' + button.dataset.status + '"]')
      .forEach(function (row) { row.hidden = !shown; });
  });
});
"""


class ReportFormatError(ValueError):
    """The file is not a kfac-conformance JSON report this version can read."""


def load(path: str | Path) -> dict:
    """Read a JSON report; a clear error for a missing file, bad JSON or an unknown schema."""
    path = Path(path)
    if not path.is_file():
        raise ReportFormatError(f"report {str(path)!r} does not exist")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportFormatError(f"report {str(path)!r} is not valid JSON: {error}") from None
    version = report.get("schema_version") if isinstance(report, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ReportFormatError(
            f"report {str(path)!r} has schema_version {version!r}; this version reads "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    return report


def _e(value: object) -> str:
    return html.escape(str(value))


def _number(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):  # "inf" and "nan" are stored as strings
        return value
    return f"{value:.3g}"


def expected_label(check_id: str) -> str:
    """What a check compares the candidate's block against."""
    family = check_id.split("/", 1)[0]
    if family == "exactness":
        return "exact block (oracle)"
    if family == "agreement":
        return "kfac_ref's block (reference)"
    return "expected block"


def _settings(report: dict) -> str:
    candidate = report["candidate"]
    rows = [
        ("candidate", f"{candidate['name']} (spec {candidate['spec']})"),
        ("version", candidate.get("version") or "not declared"),
        ("profile", report["profile"]),
        ("device", report["device"]),
        ("timeout per check", f"{report['timeout_s']:g} s" if report.get("timeout_s") else "none"),
        ("isolated in child processes", "yes" if report.get("isolate") else "no"),
        ("torch", report.get("torch_version", "?")),
        ("suite", report.get("suite_version", "?")),
        ("report schema", report["schema_version"]),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<dl class="settings">{items}</dl>'


def _capabilities(report: dict) -> str:
    capabilities = report["candidate"].get("capabilities")
    if capabilities is None:
        claimed = "<p>Not recorded in this report (schema version 1).</p>"
    else:
        cells = "".join(
            f"<tr><th>{_e(name)}</th><td>{_e(_plain(value))}</td></tr>"
            for name, value in capabilities.items()
        )
        claimed = f"<table>{cells}</table>"
    return f"<h3>Declared capabilities and conventions</h3>{claimed}"


def _plain(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "(none)"
    if isinstance(value, dict):
        return "; ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return str(value)


def _banner(report: dict) -> str:
    summary = report["summary"]
    counts = ", ".join(f"{summary.get(s, 0)} {s}" for s in STATUSES)
    text = f"{summary['ran']} of {summary['total']} items ran: {counts}."
    if not report["complete"]:
        why = f" ({report['interruption']})" if report.get("interruption") else ""
        text += f" INCOMPLETE{why}: {summary['not_run']} items did not run."
        kind = "bad"
    else:
        kind = "bad" if summary["failed"] or summary["error"] else "good"
    return f'<div class="banner {kind}">{_e(text)}</div>'


def _families(report: dict) -> str:
    families: dict[str, Counter] = {}
    for result in report["results"]:
        families.setdefault(result["check_id"].split("/", 1)[0], Counter())[result["status"]] += 1
    header = "".join(f'<th class="st-{s}">{s}</th>' for s in STATUSES)
    rows = "".join(
        f"<tr><td>{_e(family)}</td>"
        + "".join(f'<td class="number">{counts.get(s, 0) or ""}</td>' for s in STATUSES)
        + "</tr>"
        for family, counts in families.items()
    )
    return f"<table><tr><th>family</th>{header}</tr>{rows}</table>"


def _anchor(item_id: str) -> str:
    return "item-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in item_id)


def _items(report: dict) -> str:
    counts = Counter(result["status"] for result in report["results"])
    buttons = "".join(
        f'<button type="button" class="st-{s}" data-status="{s}" aria-pressed="true">'
        f"{s} ({counts[s]})</button>"
        for s in STATUSES
        if counts[s]
    )
    rows = []
    for result in report["results"]:
        status = result["status"]
        item = _e(result["id"])
        if status in DETAILED:
            item = f'<a href="#{_anchor(result["id"])}">{item}</a>'
        message = result["message"].strip().splitlines()
        rows.append(
            f'<tr data-status="{status}"><td class="status st-{status}">{status}</td>'
            f"<td>{item}</td><td class=number>{_number(result.get('observed'))}</td>"
            f"<td class=number>{_number(result.get('tolerance'))}</td>"
            f"<td class=number>{result.get('duration_s', 0):.2f}</td>"
            f"<td>{_e(message[0] if message else '')}</td></tr>"
        )
    header = (
        "<tr><th>status</th><th>item</th><th>observed</th><th>tolerance</th><th>s</th>"
        "<th>message</th></tr>"
    )
    return (
        f'<div id="filters">Show: {buttons}</div><table id="items">{header}{"".join(rows)}</table>'
    )


def _pictures(result: dict, draw: bool) -> str:
    evidence = result.get("evidence")
    if evidence is None:
        return ""
    if not draw:
        return (
            '<p class="banner note">Heatmaps of the blocks are stored in the report but not '
            f"drawn: matplotlib is not installed. <code>{_e(heatmaps.INSTALL_HINT)}</code>, "
            "then run <code>kfac-conformance report REPORT.json --html OUT.html</code>.</p>"
        )
    try:
        png = heatmaps.heatmaps_png(evidence, expected_label(result["check_id"]))
    except (KeyError, ValueError) as error:  # a damaged entry must not cost the whole page
        return f'<p class="banner note">The stored blocks cannot be drawn: {_e(error)}</p>'
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    note = ""
    if evidence["downsampled"]:
        note = (
            f"<p>The {evidence['size']}x{evidence['size']} block is downsampled to "
            f"{evidence['stored_size']}x{evidence['stored_size']} cells: the blocks show each "
            "cell's mean, the difference each cell's largest entry.</p>"
        )
    alt = f"heatmaps of layer {evidence['layer']} of {result['id']}"
    return f'{note}<img class="heatmap" alt="{_e(alt)}" src="{source}">'


def _failure(result: dict, draw: bool) -> str:
    status = result["status"]
    parts = [
        f'<div class="failure {status}" id="{_anchor(result["id"])}">',
        f'<h3><span class="status st-{status}">{status}</span> {_e(result["id"])}</h3>',
        f"<pre>{_e(result['message'].strip())}</pre>",
    ]
    if result.get("observed") is not None:
        parts.append(
            f"<p>observed error {_number(result['observed'])}, "
            f"tolerance {_number(result['tolerance'])}</p>"
        )
    if result.get("diagnosis"):
        parts.append(f"<p><b>Diagnosis:</b> {_e(result['diagnosis'])}</p>")
    reproduction = result.get("reproduction") or {}
    if reproduction.get("command"):
        parts.append(f"<p><b>Reproduce:</b></p><pre>{_e(reproduction['command'])}</pre>")
    if reproduction.get("problem"):
        parts.append(f"<p><b>Problem:</b> {_e(_plain(reproduction['problem']))}</p>")
    parts.append(_pictures(result, draw))
    parts.append("</div>")
    return "".join(parts)


def render(report: dict, draw: bool | None = None) -> str:
    """The HTML page of ``report`` (a loaded JSON report). ``draw`` defaults to whether
    matplotlib is installed."""
    draw = heatmaps.available() if draw is None else draw
    candidate = report["candidate"]
    title = f"kfac-conformance: {candidate['name']} {candidate.get('version') or ''}".strip()
    detailed = [r for r in report["results"] if r["status"] in DETAILED]
    evidence_count = sum(r.get("evidence") is not None for r in detailed)
    sections = [
        f"<h1>{_e(title)}</h1>",
        _banner(report),
        '<div class="columns"><div><h2>Candidate and settings</h2>',
        _settings(report),
        "</div><div><h2>Summary per family</h2>",
        _families(report),
        _capabilities(report),
        "</div></div>",
        f"<h2>Failures, errors and expected failures ({len(detailed)})</h2>",
    ]
    if evidence_count and not draw:
        sections.append(
            '<p class="banner note">No heatmaps: matplotlib is not installed. '
            f"<code>{_e(heatmaps.INSTALL_HINT)}</code> draws them.</p>"
        )
    sections += [_failure(result, draw) for result in detailed] or ["<p>None.</p>"]
    sections += ["<h2>All items</h2>", _items(report)]
    if report.get("not_run"):
        items = "".join(f"<li>{_e(item)}</li>" for item in report["not_run"])
        sections.append(f"<h2>Not run ({len(report['not_run'])})</h2><ul>{items}</ul>")
    if report.get("unused_expected_failures"):
        items = "".join(f"<li>{_e(p)}</li>" for p in report["unused_expected_failures"])
        sections.append(f"<h2>Expected failures that matched no check</h2><ul>{items}</ul>")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write(report: dict, path: str | Path, draw: bool | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, draw), encoding="utf-8")
