"""A check owns what it covers: where it runs is read from the check (and its cases), never from
a table elsewhere, so adding a check touches its family's module and the catalogue only."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from running import inline
from torch import nn

from kfac_conformance.cases.canonical import ALL_CASES, Case
from kfac_conformance.checks.base import (
    KINDS,
    CaseEntry,
    Check,
    CheckFailed,
    FuzzProperty,
    Measurement,
    Needs,
)
from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.checks.drawn import always
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.execution.runner import run_items
from kfac_conformance.fuzzing import properties
from kfac_conformance.reference_candidate import ReferenceCandidate

PACKAGE = Path(__file__).resolve().parents[1] / "conformance"
FAMILIES = sorted({check.family for check in ALL_CHECKS})
CHECK_ID = re.compile(rf"^({'|'.join(map(re.escape, FAMILIES))})/")


def _is_check_id(node: ast.AST) -> bool:
    """A string literal, or an f-string whose literal start, names a check family."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(CHECK_ID.match(node.value))
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return isinstance(first, ast.Constant) and bool(CHECK_ID.match(str(first.value)))
    return False


def check_id_keys(source: str) -> list[tuple[int, str]]:
    """Check ids written as literals and used as keys: of a dict (literal or comprehension),
    of a subscript, as members of a set, or compared with ``==`` or ``in``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        keys: list[ast.AST] = []
        if isinstance(node, ast.Dict):
            keys = [key for key in node.keys if key is not None]
        elif isinstance(node, ast.DictComp):
            keys = [node.key]
        elif isinstance(node, ast.Subscript):
            keys = [node.slice]
        elif isinstance(node, ast.Set):
            keys = node.elts
        elif isinstance(node, ast.SetComp):
            keys = [node.elt]
        elif isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                keys += side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        found += [(key.lineno, ast.unparse(key)) for key in keys if _is_check_id(key)]
    return sorted(found)


def test_no_table_outside_the_checks_is_keyed_by_check_ids():
    offenders = {
        str(path.relative_to(PACKAGE)): check_id_keys(path.read_text())
        for path in sorted(PACKAGE.rglob("*.py"))
        if "checks" not in path.relative_to(PACKAGE).parts[:1]
    }
    assert {path: keys for path, keys in offenders.items() if keys} == {}


def test_the_scan_finds_check_ids_planted_as_keys(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""Mentions exactness/type-2-expand in a docstring, which is no key."""\n'
        'NAME = "mc/unbiased"\n'
        'TABLE = {"exactness/type-2-expand": 1}\n'
        'BY_KIND = {f"agreement/{kind}": kind for kind in ("type-2",)}\n'
        'ORDER = TABLE["invariance/permutation"]\n'
        'SLOW = frozenset({"mc/sqrt-m-convergence"})\n'
        'SKIP = NAME in ("side-effects/none", "structure/symmetric-psd")\n'
    )
    assert check_id_keys(planted.read_text()) == [
        (3, "'exactness/type-2-expand'"),
        (4, "f'agreement/{kind}'"),
        (5, "'invariance/permutation'"),
        (6, "'mc/sqrt-m-convergence'"),
        (7, "'side-effects/none'"),
        (7, "'structure/symmetric-psd'"),
    ]


def test_every_check_declares_one_of_the_kinds():
    assert {check.kind for check in ALL_CHECKS} <= set(KINDS)
    with pytest.raises(ValueError, match="kind must be one of"):
        dataclasses.replace(ALL_CHECKS[0], kind="approximate")


def test_a_check_id_without_a_family_is_refused():
    with pytest.raises(ValueError, match="must be 'family/name'"):
        dataclasses.replace(ALL_CHECKS[0], id="no-family")


def test_the_quick_profile_runs_the_cases_marked_quick():
    quick = {entry.id for entry in case_entries("quick")}
    assert quick == {case.id for case in ALL_CASES.values() if case.quick}
    assert 0 < len(quick) < len(case_entries("default"))


def _finite_factors(session, entry: CaseEntry) -> Measurement:
    """The toy property: every factor the candidate returns is finite."""
    problem = session.fresh(entry)
    result = session.call(problem, Request("type-2", "expand", bias="separate"))
    for layer, factors in result.items():
        if not (torch.isfinite(factors.A).all() and torch.isfinite(factors.B).all()):
            raise CheckFailed(f"layer {layer!r}: a factor is not finite")
    return Measurement()


TOY = Check(
    "toy/finite-factors",
    "every factor is finite",
    "a test of the catalogue's extension",
    kind="guard",
    measure=_finite_factors,
    cases=lambda entry: entry.case is not None and entry.case.num_batches > 1,
    fuzz=FuzzProperty(always, order=2),
)


def _two_data_problem() -> Problem:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2)).double()
    X = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    y = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["0"], "toy-linear[mse]")


TOY_ENTRY = CaseEntry("toy-linear[mse]", _two_data_problem)
TOY_OWNING = Check(
    "toy/finite-on-its-own-case",
    "every factor is finite on a purpose-built problem",
    "a test of the catalogue's extension",
    kind="guard",
    measure=_finite_factors,
    own_cases=(TOY_ENTRY,),
)


def test_a_new_check_needs_only_the_catalogue_to_be_planned_and_run():
    catalogue = [*ALL_CHECKS, TOY, TOY_OWNING]
    entries = case_entries("default")
    items = plan("default", entries, checks=catalogue)
    several_batches = [entry.id for entry in entries if entry.case.num_batches > 1]
    assert [item.entry.id for item in items if item.check is TOY] == several_batches
    assert several_batches
    # the owned case comes with its check, and no other check runs on it
    assert [item.id for item in items if item.entry is TOY_ENTRY] == [
        "toy/finite-on-its-own-case[toy-linear[mse]]"
    ]
    assert items[: -len(several_batches) - 1] == plan("default", entries)
    toy_items = [item for item in items if item.check.family == "toy"]
    results = list(run_items(ReferenceCandidate(), toy_items, inline()))
    assert [result.status for result in results] == ["passed"] * len(toy_items)


def test_a_new_check_needs_only_the_catalogue_to_be_a_fuzz_property(monkeypatch):
    catalogue_properties = properties.fuzz_properties([*ALL_CHECKS, TOY, TOY_OWNING])
    ids = [check.id for check in catalogue_properties]
    # ordered by FuzzProperty.order: after the structure property (order 2), before invariance
    assert ids.index("structure/symmetric-psd") + 1 == ids.index(TOY.id)
    assert TOY_OWNING.id not in ids  # no FuzzProperty, no fuzzing
    assert [i for i in ids if i != TOY.id] == list(properties.PROPERTY_IDS)
    # and the fuzzer runs it on a drawn example
    monkeypatch.setattr(properties, "PROPERTIES", catalogue_properties)
    case = Case("drawn", [["linear", 2, 2, True]], (3, 2), "mse", num_batches=2)
    results = properties.check_example(
        ReferenceCandidate(), case, Request("type-2", "expand"), [TOY.id]
    )
    assert [(result.check_id, result.status) for result in results] == [(TOY.id, "passed")]


def test_a_missing_claim_skips_before_the_check_runs():
    def unreachable(session, entry):
        raise AssertionError("a check whose needs are unmet must not run")

    needs_ekfac = dataclasses.replace(
        TOY, measure=unreachable, needs=Needs(approximations=frozenset({"ekfac"}))
    )

    class KfacOnly(ReferenceCandidate):
        capabilities = dataclasses.replace(
            ReferenceCandidate.capabilities, approximations=frozenset({"kfac"})
        )

    [item, *_] = plan("default", case_entries("default"), checks=[needs_ekfac])
    [result] = run_items(KfacOnly(), [item], inline())
    assert (result.status, result.message) == ("skipped", "not supported: approximations ['ekfac']")
