"""The record types of a finding, and their checks: what docs/findings.md is rendered from.

The records themselves are data, in :mod:`kfac_conformance.reports.findings.catalogue`.
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

LIBRARIES = ("curvlinops", "asdl", "backpack", "kronfluence", "nngeometry", "kfac-jax", "laplace")

# what a failing cell is; each classification as the library's maintainer would state it
CLASSIFICATIONS = {
    "bug": "the library's number contradicts its own documented definition, or it crashes "
    "on an input it claims to support",
    "documented limitation": "an input the library documents it does not handle, answered "
    "without an error",
    "limitation": "an input the library neither documents nor handles, answered without an error",
    "convention difference": "a different definition of the quantity, which the library "
    "documents or applies consistently",
    "approximation by design": "the method is not type-2 KFAC and does not claim to be",
}


@dataclass(frozen=True)
class Head:
    """The development head of a library that was read (fetched 2026-12-05)."""

    repository: str  # GitHub owner/name
    commit: str  # 40 hex digits
    date: str  # the commit's date, YYYY-MM-DD

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repository}/tree/{self.commit}"


@dataclass(frozen=True)
class Source:
    """A place in a library's source: where it documents a behaviour, or where the cause lies."""

    version: str  # the release ("3.0.1") or "head" (the record's library head)
    file: str  # path inside the library's repository
    lines: str  # "56-61"
    words: str = ""  # the library's own words there, quoted exactly ("" for code)


@dataclass(frozen=True)
class Cells:
    """Items of the conformance matrix a finding explains, for one candidate: item ids or
    globs over them (``*`` and ``?``, brackets literal, as in expected-failure files)."""

    candidate: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    id: str  # a letter for the library and a number: "C1"
    libraries: tuple[str, ...]
    title: str
    classification: str  # a key of CLASSIFICATIONS
    pinned: tuple[
        str, ...
    ]  # the releases checked, as distributions: "curvlinops-for-pytorch==3.0.1"
    at_head: str  # what the development head does, read there (one sentence)
    cause: tuple[Source, ...]
    documented: tuple[Source, ...] = ()  # where the library states the behaviour itself
    cells: tuple[Cells, ...] = ()
    repros: tuple[str, ...] = ()  # docs/repro/*.py
    upstream: str = ""  # docs/upstream/<library>-<id>.md: every bug's report (fixed ones say so)
    fixed_in: str = ""  # the head's commit that fixes a bug, when it is fixed there

    @property
    def anchor(self) -> str:
        return self.id.lower()


def validate(findings: tuple[Finding, ...], heads: dict[str, Head]) -> None:
    """Raise ValueError naming the first record that is malformed."""
    seen = set()
    for finding in findings:
        problems = _problems(finding, heads)
        if finding.id in seen:
            problems.append("its id is used twice")
        seen.add(finding.id)
        if problems:
            raise ValueError(f"finding {finding.id}: " + "; ".join(problems))


def _problems(finding: Finding, heads: dict[str, Head]) -> list[str]:
    problems = []
    unknown = [name for name in finding.libraries if name not in LIBRARIES]
    if unknown or not finding.libraries:
        problems.append(f"libraries {finding.libraries} are not among {LIBRARIES}")
    if any(name not in heads for name in finding.libraries):
        problems.append("a library has no recorded development head")
    if finding.classification not in CLASSIFICATIONS:
        problems.append(
            f"classification {finding.classification!r} is not one of {tuple(CLASSIFICATIONS)}"
        )
    expected = f"docs/upstream/{finding.libraries[0]}-{finding.id}.md" if finding.libraries else ""
    bug = finding.classification == "bug"
    if bug and finding.upstream != expected:
        problems.append(f"a bug needs its upstream report at {expected!r}")
    if not bug and finding.upstream:
        problems.append("only a bug has an upstream report")
    if finding.fixed_in and finding.classification != "bug":
        problems.append("only a bug is fixed")
    if not finding.repros:
        problems.append("no reproduction script")
    if any("==" not in release for release in finding.pinned) or not finding.pinned:
        problems.append("pinned releases must read 'distribution==version'")
    return problems
