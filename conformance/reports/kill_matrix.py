"""The kill matrix: which checks kill which mutant of the bug zoo, and what diagnosis they give.

Run from the repository root (the zoo lives in ``tests/zoo`` and is imported by path)::

    python -m kfac_conformance.reports.kill_matrix            # writes docs/kill-matrix.md

Every mutant runs against the whole default profile, and through the property-based search
(``kfac-conformance fuzz``, :data:`FUZZ_EXAMPLES` examples, seed 0, no case file and no example
database). A mutant no check kills is listed as surviving: that is a missing check, and the
command exits with status 1.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.fuzzing.search import search

ZOO_PATH = Path("tests") / "zoo"
OUTPUT = Path("docs") / "kill-matrix.md"
PROFILE = "default"
FUZZ_EXAMPLES = 300
_ZOO_MODULE = "kfac_conformance_zoo"


def load_zoo(path: Path = ZOO_PATH) -> ModuleType:
    """Import the zoo package at ``path`` (a folder with ``__init__.py`` defining ``MUTANTS``)."""
    init = path / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(
            f"no bug zoo at {str(path)!r}: run from the repository root or pass --zoo"
        )
    if _ZOO_MODULE in sys.modules:
        return sys.modules[_ZOO_MODULE]
    spec = importlib.util.spec_from_file_location(
        _ZOO_MODULE, init, submodule_search_locations=[str(path)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_ZOO_MODULE] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Row:
    mutant: str
    pitfall: str
    killers: Counter  # check id -> number of failing or erroring items
    diagnoses: list[str]
    items: int
    seconds: float
    fuzz: str = ""  # what the search found: "property (examples, seconds)", or "" if nothing


def kill_row(mutant_name: str, zoo_path: str = str(ZOO_PATH)) -> Row:
    """Run one mutant against the whole default profile."""
    mutant = load_zoo(Path(zoo_path)).MUTANTS_BY_NAME[mutant_name]
    items = plan(PROFILE, case_entries(PROFILE))
    start = time.perf_counter()
    killers: Counter = Counter()
    diagnoses: list[str] = []
    for result in run_items(mutant(), items, PROFILE):
        if result.status in ("failed", "error"):
            killers[result.check_id] += 1
            if result.diagnosis and result.diagnosis not in diagnoses:
                diagnoses.append(result.diagnosis)
    seconds = time.perf_counter() - start
    outcome = search(mutant(), FUZZ_EXAMPLES, seed=0, database=None, max_failures=1)
    fuzz = ", ".join(failure.property for failure in outcome.failures)
    if fuzz:
        fuzz += f" ({outcome.examples} examples, {outcome.seconds:.0f} s)"
    return Row(mutant_name, mutant.pitfall(), killers, diagnoses, len(items), seconds, fuzz)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row], command: str) -> str:
    lines = [
        "# Kill matrix",
        "",
        "Each mutant of the bug zoo (`tests/zoo`) is the reference with one deliberate mistake. "
        "It is run against the whole default profile; *killed by* lists every check with at "
        "least one failing or erroring item (and how many items), *diagnosis* the distinct "
        "diagnoses the failures carried (the first three). *fuzz* is what `kfac-conformance fuzz` "
        f"found with no case file ({FUZZ_EXAMPLES} examples at most, seed 0, no example "
        "database): the failing property of the shrunk problem, the examples tried (shrinking "
        "included) and the time.",
        "",
        f"Generated {datetime.date.today().isoformat()} with `{command}` "
        f"(torch {torch.__version__}, {rows[0].items if rows else 0} items per mutant).",
        "",
        "| mutant | pitfall | killed by | diagnosis | fuzz |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        killed = (
            "<br>".join(f"{check} ({count})" for check, count in sorted(row.killers.items()))
            or "**SURVIVED: missing check**"
        )
        diagnosis = "<br>".join(_cell(d) for d in row.diagnoses[:3]) or "-"
        fuzz = row.fuzz or "**SURVIVED**"
        lines.append(f"| {row.mutant} | {_cell(row.pitfall)} | {killed} | {diagnosis} | {fuzz} |")
    fuzzed = sum(bool(row.fuzz) for row in rows)
    lines += ["", f"The fuzzer kills {fuzzed} of {len(rows)} mutants with no case file."]
    per_check: Counter = Counter(check for row in rows for check in row.killers)
    lines += ["", "## Mutants killed per check", "", "| check | mutants killed |", "|---|---|"]
    lines += [f"| {check} | {count} |" for check, count in sorted(per_check.items())]
    only = {row.mutant: next(iter(row.killers)) for row in rows if len(row.killers) == 1}
    if only:
        lines += ["", "## Mutants only one check kills", ""]
        lines += [f"- {mutant}: {check}" for mutant, check in only.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default=str(ZOO_PATH), help="the zoo package folder")
    parser.add_argument("--output", default=str(OUTPUT), help="the markdown file to write")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel")
    args = parser.parse_args(argv)
    # tiny problems: a second thread only waits for a busy core (docs/performance.md)
    torch.set_num_threads(1)
    names = [mutant.__name__ for mutant in load_zoo(Path(args.zoo)).MUTANTS]
    work = [(name, args.zoo) for name in names]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            rows = pool.starmap(kill_row, work)
    else:
        rows = [kill_row(*job) for job in work]
    for row in rows:
        print(
            f"{row.mutant}: killed by {dict(row.killers) or 'nothing'} ({row.seconds:.1f} s); "
            f"fuzz: {row.fuzz or 'nothing'}"
        )
    command = "python -m kfac_conformance.reports.kill_matrix"
    Path(args.output).write_text(markdown(rows, command))
    print(f"wrote {args.output}")
    return 0 if all(row.killers for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
