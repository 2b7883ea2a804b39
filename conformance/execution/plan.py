"""The one check generator: the cases of a profile and the (check, case) items to run.

Items come only from what the checks and cases carry: a check's profiles, its case selector
or the purpose-built cases it owns, and a case's ``quick`` flag.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from kfac_conformance.cases import stored as fixtures
from kfac_conformance.cases.canonical import AGREEMENT_CASES, CANONICAL_CASES, Case
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.contract.expected_failures import glob_matches
from kfac_conformance.contract.loading import load_case_factory
from kfac_conformance.execution.profiles import PROFILES, Profile


@dataclass(frozen=True)
class Item:
    check: Check
    entry: CaseEntry

    @property
    def id(self) -> str:
        return f"{self.check.id}[{self.entry.id}]"


def _case_entry(case: Case) -> CaseEntry:
    if case.id in fixtures.available_case_ids():
        return CaseEntry(
            case.id,
            lambda: fixtures.load_problem(case.id),
            case,
            stored_exact={
                curvature: functools.partial(fixtures.load_exact_blocks, case.id, curvature)
                for curvature in fixtures.STORED_CURVATURES
            },
        )
    return CaseEntry(case.id, case.make_problem, case)


def custom_entries(specs: Sequence[str]) -> list[CaseEntry]:
    """The problems of ``--case`` specs; a fuzz case file's comes with its drawn example."""
    entries = []
    for spec in specs:
        factory = load_case_factory(spec)
        case, request = factory.drawn or (None, None)
        for index, problem in enumerate(factory()):
            entries.append(
                CaseEntry(
                    problem.case_id, lambda f=factory, i=index: f()[i], case, drawn_request=request
                )
            )
    return entries


def _profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def case_entries(profile: str, custom: Sequence[CaseEntry] = ()) -> list[CaseEntry]:
    """The canonical cases of ``profile`` (only those marked ``quick`` in a quick profile),
    then ``custom``. The purpose-built cases that checks own are not among them."""
    quick = _profile(profile).quick
    cases = [case for case in [*CANONICAL_CASES, *AGREEMENT_CASES] if case.quick or not quick]
    return [*(_case_entry(case) for case in cases), *custom]


def entries_of(check: Check, entries: Sequence[CaseEntry]) -> list[CaseEntry]:
    """Where ``check`` runs: the cases it owns, else those of ``entries`` it selects; and the
    drawn examples (fuzz case files) on which it ran as a fuzz property."""
    drawn = [entry for entry in entries if entry.drawn_request is not None]
    chosen = list(check.own_cases) or [
        entry for entry in entries if entry.drawn_request is None and check.cases(entry)
    ]
    return chosen + [
        entry
        for entry in drawn
        if check.fuzz is not None and check.fuzz.runs_on(entry.case, entry.drawn_request)
    ]


def plan(
    profile: str,
    entries: Sequence[CaseEntry],
    select: Sequence[str] = (),
    checks: Sequence[Check] = ALL_CHECKS,
) -> list[Item]:
    """Every (check, case) pair of the profile, in a stable order, filtered by ``select``
    (globs with ``*`` and ``?``; brackets are literal, so an item id selects itself)."""
    _profile(profile)
    items = [
        Item(check, entry)
        for check in checks
        if profile in check.profiles
        for entry in entries_of(check, entries)
    ]
    if select:
        items = [item for item in items if any(glob_matches(g, item.id) for g in select)]
    return items
