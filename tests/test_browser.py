"""The HTML report of a failing run, rendered by headless Chromium (Debian's ``chromium``).

``nox -s browser`` installs what these tests need (matplotlib; Chromium with apt-get when run
as root) and runs them with ``KFAC_CONFORMANCE_REQUIRE_BROWSER=1``, which turns the skips into
failures. Otherwise, without the browser or matplotlib, they skip with the reason.

Chromium prints every console message of the page (``console.error``, uncaught exceptions,
Content-Security-Policy violations) as an ``INFO:CONSOLE`` line on stderr with
``--enable-logging=stderr``; the report's page prints none, so any such line fails the test.
A probe script appended to the page records, after the load event, whether each heatmap
decoded and whether the status filter hides rows; ``--dump-dom`` returns the page with it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kfac_conformance.reports import heatmaps
from kfac_conformance.reports import html as html_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("KFAC_CONFORMANCE_REQUIRE_BROWSER") == "1"
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None and not REQUIRED,
        reason="Chromium is absent (apt-get install chromium, or nox -s browser)",
    ),
    pytest.mark.skipif(
        not heatmaps.available() and not REQUIRED,
        reason='matplotlib is absent: pip install -e ".[report]"',
    ),
]
CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\] (.*)")
PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.querySelectorAll('img.heatmap'));
  document.body.dataset.heatmaps = images.length;
  document.body.dataset.decoded = images.filter(function (i) {
    return i.complete && i.naturalWidth > 600; }).length;
  document.querySelector('#filters button[data-status="passed"]').click();
  document.body.dataset.passedVisible = Array.from(
    document.querySelectorAll('#items tr[data-status="passed"]')).filter(function (r) {
      return !r.hidden; }).length;
});
</script>"""


def render_in_chromium(page: Path) -> tuple[str, list[str]]:
    """The DOM after load, and the console messages."""
    assert CHROMIUM is not None, "KFAC_CONFORMANCE_REQUIRE_BROWSER=1 but chromium is not on PATH"
    completed = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--enable-logging=stderr",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout, CONSOLE.findall(completed.stderr)


def with_probe(report: dict, path: Path, extra: str = "") -> Path:
    page = html_report.render(report, draw=True)
    path.write_text(page.replace("</body>", PROBE + extra + "</body>"))
    return path


def test_a_failing_report_renders_without_console_errors_with_its_heatmaps(
    failing_report, tmp_path
):
    report = html_report.load(failing_report)
    dom, console = render_in_chromium(with_probe(report, tmp_path / "report.html"))
    assert console == []
    failures = sum(r["evidence"] is not None for r in report["results"])
    assert failures == 2
    assert f'data-heatmaps="{failures}"' in dom
    assert f'data-decoded="{failures}"' in dom  # every PNG decoded, and is a real picture
    assert 'data-passed-visible="0"' in dom  # the status filter hid the passed rows


def test_the_console_check_sees_errors(failing_report, tmp_path):
    """The control: the same page with a script error and a blocked network load."""
    broken = '<script>undefinedFunction();</script><img src="https://example.invalid/x.png">'
    page = with_probe(html_report.load(failing_report), tmp_path / "broken.html", broken)
    _, console = render_in_chromium(page)
    assert any("undefinedFunction is not defined" in message for message in console)
    assert any("Content Security Policy" in message for message in console)
