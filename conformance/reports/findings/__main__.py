"""``python -m kfac_conformance.reports.findings``: ``measure`` one environment, or ``render``
docs/findings.md from the measurements (both run by ``nox -s findings``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kfac_conformance.reports.findings import store
from kfac_conformance.reports.findings.measure import measure
from kfac_conformance.reports.findings.render import render_file

MEASURED = Path("docs/findings/measured.json")
TEMPLATE = Path("docs/findings/template.md")
PAGE = Path("docs/findings.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    measuring = commands.add_parser("measure", help="this environment's scripts and cells")
    measuring.add_argument("--extra", required=True, help="the extras this environment installed")
    measuring.add_argument("--candidate", action="append", default=[], help="run its cells")
    measuring.add_argument("--jax", action="store_true", help="candidates of the JAX runner")
    measuring.add_argument("--output", type=Path, required=True)
    rendering = commands.add_parser("render", help="merge measurements, write the page")
    rendering.add_argument("--raw", type=Path, help="folder of `measure` outputs to merge first")
    rendering.add_argument("--measured", type=Path, default=MEASURED)
    rendering.add_argument("--template", type=Path, default=TEMPLATE)
    rendering.add_argument("--output", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    if args.command == "measure":
        result = measure(args.extra, args.candidate, args.jax, Path.cwd())
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        return 0
    measured = store.load(args.measured)
    for path in sorted(args.raw.glob("*.json")) if args.raw else ():
        measured = store.merged(measured, json.loads(path.read_text()))
    args.measured.parent.mkdir(parents=True, exist_ok=True)
    args.measured.write_text(store.dumps(measured))
    args.output.write_text(render_file(args.template, measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
