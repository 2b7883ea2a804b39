"""The matrix cells of each finding: the expected-failure entries whose reason names it.

An entry such as ``mc/unbiased  # A1 library bug: ...`` in ``xfail/asdl.txt`` makes the items it
matches for candidate ``asdl`` cells of A1; a reason may name several findings ("B1 ... and B2").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kfac_conformance.contract.expected_failures import read_expected_failures

XFAIL_DIRECTORY = Path(__file__).resolve().parents[2] / "adapters" / "xfail"
FINDING_ID = re.compile(r"\b([A-Z][0-9]+)\b")


@dataclass(frozen=True)
class Cell:
    """An expected-failure entry of one candidate that a finding explains."""

    candidate: str
    pattern: str  # an item id or a glob (brackets literal), as written in the file
    source: str  # file:line

    @property
    def selection(self) -> str:
        """The ``--select`` glob of the items: an entry may name a check id alone."""
        return self.pattern if "[" in self.pattern else f"{self.pattern}[*"


def finding_cells(directory: Path = XFAIL_DIRECTORY) -> dict[str, list[Cell]]:
    """Finding id -> its cells, over every expected-failure file, in file and line order."""
    cells: dict[str, list[Cell]] = {}
    for path in sorted(directory.glob("*.txt")):
        for entry in read_expected_failures(path):
            for finding_id in dict.fromkeys(FINDING_ID.findall(entry.reason)):
                cell = Cell(path.stem, entry.pattern, f"{path.name}:{entry.line}")
                cells.setdefault(finding_id, []).append(cell)
    return cells


def candidate_selections(directory: Path = XFAIL_DIRECTORY) -> dict[str, list[str]]:
    """Candidate -> the ``--select`` globs of every cell of a finding it has."""
    selections: dict[str, list[str]] = {}
    for cells in finding_cells(directory).values():
        for cell in cells:
            globs = selections.setdefault(cell.candidate, [])
            if cell.selection not in globs:
                globs.append(cell.selection)
    return selections
