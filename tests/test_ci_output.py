"""GitHub annotations (``--format github``) and JUnit XML (``--junit-xml``) from the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest

from kfac_conformance.frontends.cli import main
from kfac_conformance.reports.ci import github_annotations, junit_xml

ANNOTATION = "::error title=kfac-conformance "


def failing_items(report: dict) -> list[dict]:
    return [r for r in report["results"] if r["status"] in ("failed", "error")]


def test_one_annotation_per_failing_item_with_what_to_run(failing_report, capsys):
    assert main(["report", str(failing_report), "--format", "github"]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = json.loads(failing_report.read_text())
    failing = failing_items(report)
    annotations = [line for line in lines if line.startswith("::error")]
    assert len(annotations) == len(failing) == 2
    for line, result in zip(annotations, failing, strict=True):
        assert line.startswith(ANNOTATION + result["id"].replace(":", "%3A").replace(",", "%2C"))
        message = line.split("::", 2)[2]
        assert "\n" not in message and "%0A" in message  # one line; GitHub shows the breaks
        for needed in (
            result["check_id"],
            f"case {result['case_id']}",
            f"observed error {result['observed']:.3g}, tolerance {result['tolerance']:.3g}",
            f"reproduce: {result['reproduction']['command']}",
        ):
            assert needed in message


def test_github_format_is_the_default_under_github_actions(
    failing_report, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert main(["report", str(failing_report)]) == 0
    assert capsys.readouterr().out.count("::error ") == 2
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert main(["report", str(failing_report), "--junit-xml", str(tmp_path / "x.xml")]) == 0
    assert "::error" not in capsys.readouterr().out
    assert main(["report", str(failing_report)]) == 0  # the text summary, as the run printed
    out = capsys.readouterr().out
    assert "::error" not in out
    name = json.loads(failing_report.read_text())["candidate"]["name"]
    assert out.rstrip().splitlines()[-1].startswith(f"{name}: 3 checks ran of 3 (complete)")


def test_annotation_escapes_percent_and_line_breaks():
    result = {
        "id": "a/b[c,d:e]", "check_id": "a/b", "case_id": "c,d:e", "status": "error",
        "message": "100% wrong\r\nsecond", "observed": None, "diagnosis": None,
        "reproduction": {},
    }  # fmt: skip
    (line,) = github_annotations({"results": [result], "complete": True})
    assert line == (
        "::error title=kfac-conformance a/b[c%2Cd%3Ae]::error: a/b on case c,d:e%0A"
        "100%25 wrong%0D%0Asecond"
    )


def test_an_incomplete_run_is_annotated():
    lines = github_annotations({"results": [], "complete": False, "not_run": ["a[b]", "c[d]"]})
    assert lines == ["::error title=kfac-conformance run incomplete::2 items did not run"]


def test_junit_xml_from_a_run_counts_every_outcome(failing_report, tmp_path):
    path = tmp_path / "junit" / "kfac.xml"
    arguments = ["run", "--candidate", "zoo.sharing:ConvPatchesIgnoreGeometry", "-q"]
    selection = ["--profile", "quick", "--select", "exactness/type-2-*[conv-*]"]
    selection += ["--select", "parity/*[mlp*]", "--junit-xml", str(path)]
    assert main([*arguments, *selection]) == 1
    suite = ElementTree.parse(path).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        str(len(cases)),
        "2",
        "0",
    )
    assert len(failures) == 2 and suite.get("skipped") == str(len(skipped)) != "0"
    failure = failures[0].find("failure")
    assert failure.get("message").startswith("layer '1' (bias=separate): relative error")
    assert "reproduce: kfac-conformance run --candidate" in failure.text
    assert failures[0].get("classname") == "exactness/type-2-expand"


@pytest.mark.parametrize(
    ("status", "element"), [("xfailed", "skipped"), ("skipped", "skipped"), ("error", "error")]
)
def test_junit_maps_statuses_as_pytest_does(status, element):
    result = {
        "id": "a/b[c]", "check_id": "a/b", "case_id": "c", "status": status,
        "message": "why", "duration_s": 0.5,
    }  # fmt: skip
    report = {"candidate": {"name": "x"}, "results": [result], "not_run": ["a/b[d]"]}
    suite = ElementTree.fromstring(junit_xml(report).split("\n", 1)[1])
    first, not_run = suite.findall("testcase")
    assert first.find(element) is not None
    assert not_run.get("name") == "d" and not_run.find("error") is not None
    assert suite.get("tests") == "2"
