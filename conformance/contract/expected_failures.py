"""Expected-failure files, kept by the implementer: one id or glob per line, a reason after ``#``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class UnmatchedExpectedFailure(UserWarning):
    """An expected-failure entry that matches no check: a typo, or a check that went away."""


def glob_matches(pattern: str, text: str) -> bool:
    """Shell-style ``*`` and ``?``; brackets are literal, because item ids contain them."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, text) is not None


@dataclass(frozen=True)
class ExpectedFailure:
    pattern: str
    reason: str
    line: int
    source: str = ""  # the file the entry was read from

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def matches(self, item_id: str, check_id: str) -> bool:
        return glob_matches(self.pattern, item_id) or glob_matches(self.pattern, check_id)


def read_expected_failures(path: str | Path) -> list[ExpectedFailure]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected-failures file {str(path)!r} does not exist")
    return parse_expected_failures(path.read_text().splitlines(), str(path))


def parse_expected_failures(lines: Iterable[str], source: str = "") -> list[ExpectedFailure]:
    """The entries of the lines of an expected-failures file (named ``source``), numbered from 1."""
    entries = []
    for number, raw in enumerate(lines, start=1):
        pattern, _, reason = raw.partition("#")
        pattern = pattern.strip()
        if pattern:
            entries.append(
                ExpectedFailure(pattern, reason.strip() or "no reason given", number, source)
            )
    return entries


def match(entries: list[ExpectedFailure], item_id: str, check_id: str) -> ExpectedFailure | None:
    return next((entry for entry in entries if entry.matches(item_id, check_id)), None)


def unmatched(
    entries: Iterable[ExpectedFailure], ids: Iterable[tuple[str, str]]
) -> list[ExpectedFailure]:
    """The entries that match none of the ``(item_id, check_id)`` pairs."""
    ids = list(ids)
    return [entry for entry in entries if not any(entry.matches(*pair) for pair in ids)]
