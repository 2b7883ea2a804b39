"""docs/findings/measured.json: the last measurement of every environment, merged."""

from __future__ import annotations

import json
from pathlib import Path

from kfac_conformance.reports.findings.measure import SCRIPT_DIGITS, rounded

EMPTY = {"environments": {}, "repro": {}, "cells": {}, "fuzz": {}}


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else json.loads(json.dumps(EMPTY))


def merged(measured: dict, raw: dict) -> dict:
    """``measured`` with one environment's fresh measurement in place of its last one."""
    measured["environments"][raw["extra"]] = {"versions": raw["versions"]}
    for name, repro in raw["repro"].items():
        values = {key: rounded(value, SCRIPT_DIGITS) for key, value in repro["values"].items()}
        measured["repro"][name] = {"output": repro["output"], "values": values}
    measured["cells"].update(raw["cells"])
    measured["fuzz"].update(raw["fuzz"])
    return measured


def dumps(measured: dict) -> str:
    """Stable text: sorted keys, so that an unchanged measurement gives no diff."""
    return json.dumps(measured, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
