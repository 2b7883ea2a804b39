"""The property-based search (``kfac-conformance fuzz``): it passes the reference, finds and
shrinks a planted bug, writes case files that replay through ``run --case``, and replays its
example database first. Every search here is small and seeded, so it takes seconds."""

from __future__ import annotations

import json

import pytest
from hypothesis import Phase, given, settings
from zoo import ReductionFactorMissing

from kfac_conformance.cases.strategies import deep_linear_cases
from kfac_conformance.contract.problem import Capabilities
from kfac_conformance.frontends.cli import main
from kfac_conformance.fuzzing.problems import exactness_map, kfac_problems, kfac_requests
from kfac_conformance.fuzzing.search import PropertyFailure, assert_conforms, search
from kfac_conformance.reference_candidate import ReferenceCandidate

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
    assert (
        main(
            [
                *common,
                "--seed",
                "0",
                "--max-examples",
                "60",
                "--max-failures",
                "1",
                "-q",
                "--save-cases",
                str(cases),
                "--report-json",
                str(report),
            ]
        )
        == 1
    )
    failures = json.loads(report.read_text())["failures"]
    assert failures
    for key in (
        "property",
        "problem",
        "case_file",
        "reproduction",
        "observed",
        "tolerance",
        "diagnosis",
    ):
        assert key in failures[0]
    case_file = failures[0]["case_file"]
    select = f"*[{failures[0]['problem']['id']}]"
    replay = ["run", "--case", f"{case_file}:problem", "--select", select, "-q"]
    assert main([*replay, "--candidate", "zoo:ReductionFactorMissing"]) == 1
    assert main([*replay, "--candidate", "kfac_ref"]) == 0
    # one new example only: the failure can come back only from the database
    assert main([*common, "--seed", "1", "--max-examples", "1", "-q"]) == 1


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
