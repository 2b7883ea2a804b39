"""The one check generator: the cases of a profile and the (check, case) items to run."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from kfac_conformance.cases import stored as fixtures
from kfac_conformance.cases.canonical import AGREEMENT_CASES, CANONICAL_CASES, Case
from kfac_conformance.checks.base import CaseEntry, Check
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.checks.robustness import BUILTIN_ENTRIES
from kfac_conformance.contract.expected_failures import glob_matches
from kfac_conformance.contract.loading import load_case_factory
from kfac_conformance.execution.profiles import PROFILES

QUICK_CASE_IDS = frozenset(
    {
        "one-datum-mlp[tanh-ce-sum]",
        "one-datum-mlp[sigmoid-bce-mean]",
        "deep-linear[mse-mean-3batches]",
        "expand-deep-linear[2-axes]",
        "reduce-deep-linear[pool-in-middle]",
        "conv-reduce[stride2-pad1-mean-pool]",
        "conv-expand[last-layer-stride2-pad1-dil2]",
        "mlp[tanh-ce-batch]",
        "sequence[tanh-ce-per-position]",
    }
)


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
    entries = []
    for spec in specs:
        factory = load_case_factory(spec)
        for index, problem in enumerate(factory()):
            entries.append(CaseEntry(problem.case_id, lambda f=factory, i=index: f()[i]))
    return entries


def case_entries(profile: str, custom: Sequence[CaseEntry] = ()) -> list[CaseEntry]:
    cases = [*CANONICAL_CASES, *AGREEMENT_CASES]
    if PROFILES[profile].quick:
        cases = [case for case in cases if case.id in QUICK_CASE_IDS]
    return [*(_case_entry(case) for case in cases), *BUILTIN_ENTRIES, *custom]


def plan(
    profile: str,
    entries: Sequence[CaseEntry],
    select: Sequence[str] = (),
    checks: Sequence[Check] = ALL_CHECKS,
) -> list[Item]:
    """Every (check, case) pair of the profile, in a stable order, filtered by ``select``
    (globs with ``*`` and ``?``; brackets are literal, so an item id selects itself)."""
    items = [
        Item(check, entry)
        for check in checks
        if profile in check.profiles
        for entry in entries
        if entry.builtin == check.on_builtin and check.applies_to(entry)
    ]
    if select:
        items = [item for item in items if any(glob_matches(g, item.id) for g in select)]
    return items
