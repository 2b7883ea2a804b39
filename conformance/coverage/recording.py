"""The coverage map: the profile's plan run against a recording reference.

Why recording. Which cells an item exercises is not what its check's name or its case's id
suggests but what the candidate is actually asked: a check may skip a flavour, call only the
first claimed Fisher type, or run on a case whose dilated layer it never compares. So the
plan runs, item by item, against :class:`RecordingReference`: ``kfac_ref`` behind the claim
under study (a candidate's ``Capabilities``, with the tutorial's conventions so that every
answer passes and every check makes all the calls a conforming candidate would get; the
optional ``sampled_labels`` only where the candidate has it). Each call is placed in the
claim space (:func:`~kfac_conformance.coverage.features.describe_call`), and an item
exercises every cell one of its calls lies in, with its check's ``kind``.

What counts. A call exercises the features of every layer it is asked for, except on an
item of kind ``exact`` whose case names exact layers for the call's Fisher type and flavour:
theory fixes the truth only on those layers, and the exactness checks compare nothing else,
so only their features count. This under-counts the EKFAC checks of that kind that compare
every layer (``ekfac/correction-exact-*``); an under-count can show a hole that is none,
never hide one. A check that needs an approximation (``Check.needs``) holds only that
approximation's answers to something: the KFAC an EKFAC check asks for is EKFAC's
yardstick, and counts for nothing. A call the reference answers wrongly or refuses still
counts (the item is then listed as not passed): the map says what is asked, the run what
passes. Every other call counts with its check's kind, whatever the check does with the
answer: the kind is the check's own statement of what it compares.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from kfac_conformance.contract.conventions import TUTORIAL
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.coverage import space
from kfac_conformance.coverage.features import Call, describe_call
from kfac_conformance.execution.options import RunOptions
from kfac_conformance.execution.plan import Item, case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_ref.factors import KroneckerFactors

Cell = tuple[space.Pair, str, str]  # (pair, dimension, value)


class RecordingReference:
    """``kfac_ref`` behind ``claim``, noting where every call lies."""

    name = "coverage-recorder"

    def __init__(self, claim: Capabilities) -> None:
        self.capabilities = dataclasses.replace(claim, conventions=TUTORIAL)
        self.calls: list[Call] = []

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self.calls.append(describe_call(problem, request))
        return reference_compute(problem, request)


class RecordingReferenceWithLabels(RecordingReference):
    """The same, for a candidate that exposes the MC labels it draws."""

    def sampled_labels(self, problem: Problem, request: Request):
        return ReferenceCandidate().sampled_labels(problem, request)


def recorder_for(claim: Capabilities, exposes_labels: bool) -> RecordingReference:
    return (RecordingReferenceWithLabels if exposes_labels else RecordingReference)(claim)


def compared_layers(item: Item, call: Call) -> Sequence[str] | None:
    """The layers whose features the call exercises for ``item`` (``None``: all of them)."""
    case = item.entry.case
    if item.check.kind != "exact" or case is None:
        return None
    return case.exact_layers(call.request.fisher_type, call.request.kfac_approx) or None


def counted_calls(item: Item, calls: Sequence[Call]) -> list[Call]:
    """The calls whose answers ``item`` holds to something. A check that needs an
    approximation holds only that approximation's answers: the KFAC an EKFAC check asks for
    is EKFAC's yardstick (the basis to diagonalise, the distance to beat), so it counts for
    nothing."""
    needed = item.check.needs.approximations
    return [call for call in calls if not needed or call.request.approximation in needed]


@dataclass(frozen=True)
class Hole:
    """A cell without a check that meets one of its requirements."""

    pair: space.Pair
    dimension: str
    value: str
    requirement: str

    def describe(self) -> str:
        fisher_type, approximation = self.pair
        return (
            f"{fisher_type} / {approximation}, {self.dimension} = {self.value}: "
            f"no {self.requirement} check"
        )


@dataclass
class CoverageMap:
    """Which checks (by how many items) exercise each cell of a claim under a profile."""

    candidate: str
    claim: Capabilities
    profile: str
    kinds: dict[str, str] = field(default_factory=dict)  # check id -> kind
    cells: dict[Cell, dict[str, set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(set))
    )  # cell -> check id -> item ids
    not_passed: list[str] = field(default_factory=list)

    def checks(self, cell: Cell) -> dict[str, int]:
        """Check id -> number of items, in catalogue order."""
        found = self.cells.get(cell, {})
        return {check: len(found[check]) for check in self.kinds if check in found}

    def missing(self, cell: Cell) -> list[str]:
        """The requirements of ``cell`` that no check meets and no exclusion waives."""
        pair, dimension, value = cell
        return [
            requirement
            for requirement in space.REQUIREMENTS
            if space.exclusion_for(pair, dimension, value, requirement) is None
            and not any(
                space.meets(requirement, self.kinds[check], pair[0]) for check in self.checks(cell)
            )
        ]

    def required_cells(self) -> list[Cell]:
        """Every cell of the claim outside the wholly excluded pairs."""
        values = space.claimed_values(self.claim)
        return [
            (pair, dimension, value)
            for pair in space.claimed_pairs(self.claim)
            if space.excluded_pair(pair) is None
            for dimension, value in values
        ]

    def holes(self) -> list[Hole]:
        return [
            Hole(*cell, requirement)
            for cell in self.required_cells()
            for requirement in self.missing(cell)
        ]


def measure_coverage(
    claim: Capabilities, profile: str, candidate: str = "kfac_ref", exposes_labels: bool = True
) -> CoverageMap:
    """Run ``profile``'s plan against the recording reference behind ``claim``."""
    recorder = recorder_for(claim, exposes_labels)
    items = plan(profile, case_entries(profile))
    coverage = CoverageMap(candidate, claim, profile)
    # the problems are tiny: more intra-op threads only contend (the CLI's default is 1 too)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = iter(
        run_items(recorder, items, RunOptions(profile=profile, mode="inline", timeout_s=None))
    )
    try:
        for item in items:
            recorder.calls = []
            result = next(results)  # runs the item: the generator is lazy
            coverage.kinds.setdefault(item.check.id, item.check.kind)
            if result.status not in ("passed", "skipped"):
                first_line = result.message.splitlines()[0] if result.message else ""
                coverage.not_passed.append(f"{item.id}: {result.status} {first_line}".rstrip())
            for call in counted_calls(item, recorder.calls):
                for dimension, value in call.coordinates(compared_layers(item, call)):
                    coverage.cells[(call.pair, dimension, value)][item.check.id].add(item.id)
    finally:
        results.close()
        torch.set_num_threads(threads)
    return coverage
