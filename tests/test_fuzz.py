"""The property-based search (``kfac-conformance fuzz``): it passes the reference, finds and
shrinks a planted bug, reports every distinct failure of a run within a hard example budget,
writes case files that replay their property through ``run --case``, draws the problems the
defects of issue 20 need, and replays its example database first. Every search here is seeded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from random import Random

import pytest
import torch
from fuzz_defects import (
    DilationIgnored,
    TiedLastInputFirstGradient,
    UnequalBatchesWeightedEqually,
)
from hypothesis import HealthCheck, Phase, find, given, settings
from running import inline
from zoo import McGlobalRng, ReductionFactorMissing

from kfac_conformance.cases.architectures import tied_layers
from kfac_conformance.cases.strategies import deep_linear_cases
from kfac_conformance.contract.loading import SpecError, load_case_factory
from kfac_conformance.contract.problem import Capabilities, Request
from kfac_conformance.execution.plan import custom_entries, plan
from kfac_conformance.execution.result import Result
from kfac_conformance.execution.runner import run_items
from kfac_conformance.frontends.cli import main
from kfac_conformance.fuzzing import search as search_module
from kfac_conformance.fuzzing.exact_layers import exactness_map
from kfac_conformance.fuzzing.problems import DrawnCase, kfac_problems, kfac_requests
from kfac_conformance.fuzzing.properties import PROPERTIES, PROPERTY_IDS, signature
from kfac_conformance.fuzzing.search import PropertyFailure, assert_conforms, search
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_conformance.reports.kill_matrix import FUZZ_EXAMPLES

REPRO = Path(__file__).resolve().parents[1] / "docs" / "repro" / "fuzz"

pytest_plugins = ["pytester"]


@given(deep_linear_cases())
def test_the_exactness_map_extends_the_deep_linear_one(case):
    data = case.input_shape[0] * case.num_batches
    derived = exactness_map(case.architecture, case.input_shape, "mse", data)
    if data == 1 and "empirical/expand" in derived:  # one datum: the empirical Fisher too
        assert derived.pop("empirical/expand") == derived.pop("empirical/reduce")
    assert derived == case.exact


def test_the_reference_passes_a_seeded_search():
    outcome = search(ReferenceCandidate(), max_examples=6, seed=3, database=None)
    assert outcome.failures == []
    assert outcome.examples == 6


def _search_after_seeding(caller_seed: int):
    torch.manual_seed(caller_seed)
    outcome = search(McGlobalRng(), 8, seed=0, database=None)
    after = torch.rand(3)
    torch.manual_seed(caller_seed)
    return outcome, torch.equal(after, torch.rand(3))


def test_a_search_seeds_the_global_generators_and_restores_the_callers():
    """A candidate drawing from torch's global generator gets one verdict whatever the
    caller's generator state, and the caller's state is as it was after the search."""
    first, first_restored = _search_after_seeding(1)
    second, second_restored = _search_after_seeding(2)
    assert first_restored and second_restored
    assert first.examples == second.examples
    assert [(f.signature, f.result.observed) for f in first.failures] == [
        (f.signature, f.result.observed) for f in second.failures
    ]


def test_a_planted_bug_is_found_and_shrunk_to_one_layer():
    outcome = search(ReductionFactorMissing(), 60, seed=0, database=None, max_failures=1)
    assert outcome.failures, "the missing reduction factor was not found"
    failure = outcome.failures[0]
    assert failure.result.status == "failed"
    assert failure.property.split("/")[0] in ("exactness", "agreement", "invariance")
    linear = [spec for spec in failure.case.architecture if spec[0] in ("linear", "conv2d")]
    assert len(linear) == 1, f"not shrunk: {failure.case.architecture}"


def test_the_time_budget_ends_the_drawing():
    outcome = search(ReferenceCandidate(), max_examples=1000, seed=0, time_budget=1e-9)
    assert outcome.out_of_time and outcome.failures == [] and outcome.examples <= 1


def test_the_command_saves_replayable_cases_and_replays_its_database_first(tmp_path):
    database, cases, report = tmp_path / "db", tmp_path / "cases", tmp_path / "report.json"
    common = ["fuzz", "--candidate", "zoo:ReductionFactorMissing", "--database", str(database)]
    arguments = ["--seed", "0", "--max-examples", "60", "--max-failures", "1", "-q"]
    files = ["--save-cases", str(cases), "--report-json", str(report)]
    assert main([*common, *arguments, *files]) == 1
    [failure] = json.loads(report.read_text())["failures"]
    for key in ("property", "signature", "problem", "case_file", "reproduction", "diagnosis"):
        assert key in failure
    # the file replays the very property it is named after, on its own case
    select = f"{failure['property']}[{failure['problem']['id']}]"
    assert f"--select '{select}'" in failure["reproduction"]
    replay = ["run", "--case", f"{failure['case_file']}:problem", "--select", select, "-q"]
    replayed = tmp_path / "replayed.json"
    assert main([*replay, "--candidate", "zoo:ReductionFactorMissing"]) == 1
    assert main([*replay, "--candidate", "kfac_ref", "--report-json", str(replayed)]) == 0
    assert [item["id"] for item in json.loads(replayed.read_text())["results"]] == [select]
    # one new example only: the failure can come back only from the database
    assert main([*common, "--seed", "1", "--max-examples", "1", "-q", *files]) == 1


def test_usage_errors_exit_with_two(capsys):
    assert main(["fuzz", "--candidate", "kfac_ref", "--max-examples", "0"]) == 2
    assert "--max-examples" in capsys.readouterr().err
    assert main(["fuzz", "--candidate", "no-such-candidate"]) == 2
    assert "no-such-candidate" in capsys.readouterr().err
    assert main(["fuzz", "--candidate", "kfac_ref", "--property", "no/such-property"]) == 2
    assert "no/such-property" in capsys.readouterr().err


@settings(max_examples=5)
@given(kfac_problems(), kfac_requests())
def test_assert_conforms_passes_the_reference(problem, kfac_request):
    assert_conforms(ReferenceCandidate(), problem, kfac_request)


def test_assert_conforms_fails_a_mutant():
    @settings(
        max_examples=30,
        database=None,
        report_multiple_bugs=False,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(kfac_problems(), kfac_requests(Capabilities(fisher_types=frozenset({"type-2"}))))
    def test_mutant(problem, kfac_request):
        assert_conforms(ReductionFactorMissing(), problem, kfac_request)

    with pytest.raises(PropertyFailure, match="relative error"):
        test_mutant()


def test_the_pytest_option_runs_one_test_per_property(pytester):
    result = pytester.runpytest_inprocess(
        "--kfac-candidate",
        "kfac_ref",
        "--kfac-fuzz",
        "--kfac-fuzz-examples",
        "3",
        "-k",
        "fuzz/ and (structure or side-effects)",
        "-p",
        "no:randomly",
    )
    result.assert_outcomes(passed=3)


# --- every distinct failure, within a hard budget ----------------------------------------------


def _dilated(case) -> bool:
    """A Conv2d whose dilation changes what its kernel sees (a kernel larger than one)."""
    return any(spec[0] == "conv2d" and spec[3] > 1 and spec[6] > 1 for spec in case.architecture)


def test_one_run_reports_every_distinct_failure_each_with_its_case_file(tmp_path, capsys):
    report, cases = tmp_path / "report.json", tmp_path / "cases"
    spec = f"{Path(__file__).with_name('fuzz_defects.py')}:DilationIgnoredAndReductionFactorMissing"
    arguments = ["--candidate", spec, "--seed", "0", "--no-database", "-q"]
    files = ["--save-cases", str(cases), "--report-json", str(report)]
    assert main(["fuzz", *arguments, "--max-examples", str(FUZZ_EXAMPLES), *files]) == 1
    text, found = capsys.readouterr().out, json.loads(report.read_text())
    failures = found["failures"]
    assert found["examples"] <= FUZZ_EXAMPLES
    assert len({failure["signature"] for failure in failures}) == len(failures) >= 2
    for failure in failures:  # listed in the text, each with a case file on disk
        assert Path(failure["case_file"]).is_file()
        assert failure["case_file"] in text and failure["signature"] in text
    # both defects: B without R (a constant factor under mean reduction) and the dilation
    # ignored, which gives no constant factor and needs a kernel larger than one
    assert any(
        "constant factor" in failure["signature"] and failure["problem"]["reduction"] == "mean"
        for failure in failures
    )
    dilation = [
        failure
        for failure in failures
        if failure["property"] == "agreement/empirical"
        and "on conv2d" in failure["signature"]
        and "constant factor" not in failure["signature"]
    ]
    assert dilation and all(
        _dilated(load_case_factory(f"{failure['case_file']}:problem").drawn[0])
        for failure in dilation
    )


def test_a_failure_does_not_hide_another_of_the_same_property_on_other_layers_or_findings():
    conv = DrawnCase("conv", [["conv2d", 1, 1, 2, 1, 0, 2, False]], (1, 1, 3, 3), "mse")
    linear = DrawnCase("linear", [["linear", 1, 1, False]], (1, 1), "mse")

    def failed(case, diagnosis=None):
        message = "layer '0' (bias=separate): relative error 1 > tolerance 1e-10"
        return Result("agreement/empirical", case.id, "failed", message, diagnosis=diagnosis)

    assert signature(failed(conv), conv) != signature(failed(linear), linear)
    # the same defect on problems of other sizes: other numbers, the same signature
    scaled = [f"off by a constant factor x {x} = 1/N (N = {x} data): a reduction" for x in (2, 4)]
    assert signature(failed(conv, scaled[0]), conv) == signature(failed(conv, scaled[1]), conv)
    assert signature(failed(conv, scaled[0]), conv) != signature(failed(conv), conv)


def test_max_examples_is_a_hard_cap_shrinking_included(monkeypatch):
    """Every example that calls the candidate is counted, and none runs past the cap: not the
    shrinking, not hypothesis' last replay of a shrunk failure."""
    calls, inside = {"examples": 0, "outside": 0}, [False]
    check_example = search_module.check_example

    def counted(*args, **kwargs):
        calls["examples"] += 1
        inside[0] = True
        try:
            return check_example(*args, **kwargs)
        finally:
            inside[0] = False

    class Counting(ReductionFactorMissing):
        def compute(self, problem, request):
            calls["outside"] += not inside[0]
            return super().compute(problem, request)

    monkeypatch.setattr(search_module, "check_example", counted)
    for cap in (1, 20, 50):
        calls.update(examples=0, outside=0)
        outcome = search(Counting(), max_examples=cap, seed=0, database=None)
        assert outcome.failures, f"the planted bug was not found within {cap} examples"
        assert calls["examples"] == outcome.examples <= cap
        assert calls["outside"] == 0


# --- the defects of issue 20, found with no case file in the kill matrix's budget ---------------


@pytest.mark.parametrize(
    ("defect", "shows"),
    [
        (DilationIgnored, _dilated),
        (UnequalBatchesWeightedEqually, lambda case: len(set(case.batch_sizes)) > 1),
    ],
    ids=["dilation-ignored", "unequal-batches-weighted-equally"],
)
def test_the_fuzzer_finds_the_defect_unaided(defect, shows):
    outcome = search(defect(), FUZZ_EXAMPLES, seed=0, database=None, max_failures=1)
    assert outcome.failures, f"{defect.__name__} survived {outcome.examples} examples"
    [failure] = outcome.failures
    assert failure.result.status == "failed", failure.result.message
    assert shows(failure.case), f"found where the defect cannot show: {failure.case!r}"


TYING_PROPERTIES = [check.id for check in PROPERTIES if check.fuzz.weight_tying]


def test_the_fuzzer_finds_a_tied_module_with_a_and_g_from_different_uses():
    """The defect claims only the empirical Fisher, so only the empirical tying property can
    see it; every failure is on a drawn network with a module applied twice."""
    outcome = search(TiedLastInputFirstGradient(), FUZZ_EXAMPLES, seed=0, database=None)
    assert outcome.failures, "the tied module's A and G from different uses went unseen"
    assert {failure.property for failure in outcome.failures} == {
        "weight-tying/empirical-exact-or-raises"
    }
    assert all(failure.result.status == "failed" for failure in outcome.failures)
    assert all(tied_layers(failure.case.architecture) for failure in outcome.failures)


def test_the_reference_raises_on_every_drawn_module_applied_twice():
    """kfac_ref refuses a module applied twice, which every tying property accepts."""
    assert TYING_PROPERTIES, "no catalogue check is a weight-tying fuzz property"
    outcome = search(ReferenceCandidate(), 30, seed=0, database=None, properties=TYING_PROPERTIES)
    assert outcome.failures == [] and outcome.examples == 30


@settings(max_examples=40, suppress_health_check=list(HealthCheck))
@given(kfac_problems(weight_tying=True))
def test_drawn_networks_with_a_module_applied_twice_run(case):
    problem = case.make_problem()
    calls = []
    for name in tied_layers(case.architecture):
        problem.model.get_submodule(name).register_forward_hook(lambda *_: calls.append(1))
    for X, y in problem.batches:
        problem.loss_func(problem.model(X), y)
    assert len(calls) == 2 * len(problem.batches) * len(tied_layers(case.architecture))
    if calls:
        assert case.exact == {}  # the exactness theorems assume each layer is used once


def _applied_twice_last_after_a_flatten(case) -> bool:
    """The network ends flattening its shared axes, then a module applied twice."""
    tied = [index for index, spec in enumerate(case.architecture) if spec[0] == "tied"]
    if not tied:
        return False
    source = case.architecture[tied[0]][1]
    flattened = math.prod(case.input_shape[1:-1])
    return (
        flattened > 1
        and case.architecture[source - 1] == ["flatten"]
        and all(spec[0] != "linear" for spec in case.architecture[source + 1 :])
    )


def test_a_module_applied_twice_after_the_shared_axes_are_flattened_fits_them():
    """Its width is the flattened one (a drawn network once applied a layer of the unflattened
    width there, and every property met the shape error)."""
    case = find(
        kfac_problems(weight_tying=True),
        _applied_twice_last_after_a_flatten,
        settings=settings(
            max_examples=2000, database=None, suppress_health_check=list(HealthCheck)
        ),
        random=Random(0),
    )
    problem = case.make_problem()
    for X, y in problem.batches:
        problem.loss_func(problem.model(X), y)


# --- case files ------------------------------------------------------------------------------------


def _named_property(path: Path) -> str:
    [named] = [p for p in PROPERTY_IDS if path.stem.endswith("-" + p.replace("/", "-"))]
    return named


@pytest.mark.parametrize("path", sorted(REPRO.glob("*.py")), ids=lambda path: path.stem)
def test_every_case_file_replays_its_named_property(path):
    named = _named_property(path)
    entries = custom_entries([f"{path}:problem"])
    items = [item for item in plan("default", entries) if item.check.id == named]
    assert [item.entry.id for item in items] == [entry.id for entry in entries]
    results = list(run_items(ReferenceCandidate(), items, inline("default")))
    assert [result.status for result in results] == ["passed"], results[0].message


def test_a_factory_that_carries_half_a_drawn_example_is_refused(tmp_path):
    header = (
        "from kfac_conformance.fuzzing.case_files import DrawnExample\n"
        "from kfac_conformance.fuzzing.problems import DrawnCase\n"
        "from kfac_conformance.contract.problem import Request\n"
        "CASE = DrawnCase('drawn', [['linear', 1, 1, False]], (1, 1), 'mse')\n"
    )
    path = tmp_path / "case.py"
    path.write_text(header + "problem = DrawnExample(CASE, None)\n")
    with pytest.raises(SpecError, match="'request' a Request"):
        load_case_factory(f"{path}:problem")
    path.write_text(header + "problem = DrawnExample(CASE, Request('mc'))\n")
    assert load_case_factory(f"{path}:problem").drawn == (
        DrawnCase("drawn", [["linear", 1, 1, False]], (1, 1), "mse"),
        Request("mc"),
    )
