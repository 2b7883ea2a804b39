"""``pytest --kfac-candidate SPEC`` keeps up with the CLI: expected failures (XFAIL, XPASS,
strict, entries that match nothing, under pytest-xdist too), the report header, one marker per
check family, and the candidate named by the environment."""

from __future__ import annotations

import pytest

from kfac_conformance.checks.catalogue import ALL_CHECKS
from kfac_conformance.contract.loading import suite_version
from kfac_conformance.execution.plan import case_entries, plan
from kfac_conformance.frontends.environment import CANDIDATE_VARIABLE, candidate_from_environment
from kfac_conformance.frontends.pytest_plugin import FUZZ_MARKER, family_marker
from kfac_conformance.fuzzing.properties import PROPERTY_IDS as APPLICABILITY

pytest_plugins = ["pytester"]

QUICK = ("--kfac-profile", "quick", "-p", "no:cacheprovider")
# the doubled candidate fails the first item and passes the second
FAILING = "exactness/type-2-expand[deep-linear[mse-mean-3batches]]"
PASSING = "side-effects/none[deep-linear[mse-mean-3batches]]"
BOTH = ("-k", "3batches and (type-2-expand or side-effects/none)")
EXPECTED_FAILURES = f"""\
{FAILING}   # B is doubled
side-effects/none[deep-linear*]   # we thought it leaked
exactness/no-such-check   # renamed long ago
"""
UNMATCHED_WARNING = (
    "kfac-xfail.txt:3: UnmatchedExpectedFailure: expected failure 'exactness/no-such-check' "
    "matches none of the"
)
DOUBLED = """\
from kfac_conformance import KroneckerFactors
from kfac_conformance.reference_candidate import ReferenceCandidate


class Doubled(ReferenceCandidate):
    name = "doubled"

    def compute(self, problem, request):
        factors = super().compute(problem, request)
        return {k: KroneckerFactors(f.A, 2 * f.B, f.bias) for k, f in factors.items()}
"""


def quick_items(prefix: str = "") -> list[str]:
    return [item.id for item in plan("quick", case_entries("quick")) if item.id.startswith(prefix)]


@pytest.fixture
def doubled(pytester: pytest.Pytester) -> tuple[str, ...]:
    """The options that run the doubled candidate with the expected-failures file."""
    pytester.makepyfile(doubled=DOUBLED)
    (pytester.path / "kfac-xfail.txt").write_text(EXPECTED_FAILURES)
    candidate = f"{pytester.path / 'doubled.py'}:Doubled"
    return ("--kfac-candidate", candidate, "--kfac-xfail", "kfac-xfail.txt", *QUICK, *BOTH)


def test_an_expected_failure_is_xfail_and_an_unexpected_pass_xpass(pytester, doubled):
    result = pytester.runpytest_inprocess(*doubled, "-rxX")
    result.assert_outcomes(xfailed=1, xpassed=1, warnings=1)
    assert result.ret == 0
    output = result.stdout.str()
    (xfail,) = [line for line in output.splitlines() if line.startswith(f"XFAIL ::{FAILING} - ")]
    assert "expected failure (B is doubled): " in xfail and "relative error" in xfail
    assert f"XPASS ::{PASSING} - we thought it leaked (kfac-xfail.txt:2)" in output
    assert output.count(UNMATCHED_WARNING) == 1


@pytest.mark.parametrize(
    "how", ["--kfac-strict-xfail", "kfac_strict_xfail = true", "xfail_strict = true"]
)
def test_under_strict_xfail_an_unexpected_pass_fails(pytester, doubled, how):
    if how.startswith("--"):
        result = pytester.runpytest_inprocess(*doubled, how)
    else:
        pytester.makeini(f"[pytest]\n{how}\n")
        result = pytester.runpytest_inprocess(*doubled)
    result.assert_outcomes(xfailed=1, failed=1, warnings=1)
    assert "[XPASS(strict)] we thought it leaked (kfac-xfail.txt:2)" in result.stdout.str()


def test_runxfail_reports_an_expected_failure_as_the_failure_it_is(pytester, doubled):
    result = pytester.runpytest_inprocess(*doubled, "--runxfail")
    result.assert_outcomes(failed=1, passed=1, warnings=1)
    assert "off by a constant factor x 2" in result.stdout.str()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_an_unmatched_entry_is_warned_about_once(pytester, workers):
    (pytester.path / "kfac-xfail.txt").write_text(EXPECTED_FAILURES)
    options = ("--kfac-candidate", "kfac_ref", "--kfac-xfail", "kfac-xfail.txt", *QUICK)
    # every worker collects the catalogue: the warning shows once all the same
    result = pytester.runpytest_subprocess(*options, "-n", workers, "-k", "none and 3batches")
    result.assert_outcomes(xpassed=1, warnings=1)
    assert result.stdout.str().count(UNMATCHED_WARNING) == 1


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_warning_filter_makes_an_unmatched_entry_a_collection_error(pytester, workers):
    (pytester.path / "kfac-xfail.txt").write_text(EXPECTED_FAILURES)
    options = ("--kfac-candidate", "kfac_ref", "--kfac-xfail", "kfac-xfail.txt", *QUICK)
    result = pytester.runpytest_subprocess(*options, "-n", workers, "-W", "error::UserWarning")
    assert result.ret != 0
    result.assert_outcomes(errors=1)
    assert "expected failure 'exactness/no-such-check' matches none" in result.stdout.str()


def test_the_header_names_the_candidate_from_the_environment(pytester, monkeypatch):
    pytester.makepyfile(
        declared="""
        import dataclasses
        from kfac_conformance import Conventions
        from kfac_conformance.reference_candidate import ReferenceCandidate

        class Declared(ReferenceCandidate):
            name, version = "declared", "2.1"
            capabilities = dataclasses.replace(
                ReferenceCandidate.capabilities, conventions=Conventions(curvature="sum-nll")
            )
        """
    )
    spec = f"{pytester.path / 'declared.py'}:Declared"
    monkeypatch.setenv(CANDIDATE_VARIABLE, spec)
    result = pytester.runpytest_inprocess(*QUICK, "--collect-only")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            f"kfac-conformance {suite_version()}, profile quick",
            f"candidate: declared (2.1), from {CANDIDATE_VARIABLE}={spec}",
            "conventions: curvature=sum-nll, empirical_fisher=tutorial",
            f"collected {len(quick_items())} items",
        ]
    )
    # the option wins over the environment
    result = pytester.runpytest_inprocess("--kfac-candidate", "kfac_ref", *QUICK, "--co")
    result.stdout.fnmatch_lines(["candidate: kfac_ref (*), from --kfac-candidate kfac_ref"])


def test_a_blank_environment_variable_names_no_candidate():
    assert candidate_from_environment({CANDIDATE_VARIABLE: "kfac_ref"}) == "kfac_ref"
    assert candidate_from_environment({CANDIDATE_VARIABLE: "  "}) is None
    assert candidate_from_environment({}) is None


def test_each_check_family_has_a_marker_that_selects_it(pytester):
    families = list(dict.fromkeys(check.family for check in ALL_CHECKS))
    assert "side-effects" in families and family_marker("side-effects") == "kfac_side_effects"
    result = pytester.runpytest_inprocess("--kfac-candidate", "kfac_ref", "--markers")
    for family in families:
        result.stdout.fnmatch_lines([f"@pytest.mark.{family_marker(family)}: *{family}"])
    total, side_effects = len(quick_items()), len(quick_items("side-effects/"))
    options = ("--kfac-candidate", "kfac_ref", *QUICK, "--strict-markers", "--co", "-q")
    # without pytest-xdist too, whose marker the items then do without
    for plugins in ([], ["-p", "no:xdist"]):
        result = pytester.runpytest_inprocess(*options, *plugins, "-m", "kfac_side_effects")
        result.stdout.fnmatch_lines(
            [f"{side_effects}/{total} tests collected ({total - side_effects} deselected)*"]
        )
    fuzz_structure = [p for p in APPLICABILITY if p.startswith("structure/")]
    result = pytester.runpytest_inprocess(
        *options, "--kfac-fuzz", "-m", f"{FUZZ_MARKER} and kfac_structure"
    )
    everything = total + len(APPLICABILITY)
    result.stdout.fnmatch_lines(
        [
            f"{len(fuzz_structure)}/{everything} tests collected "
            f"({everything - len(fuzz_structure)} deselected)*"
        ]
    )


def test_parametrize_with_checks_marks_the_expected_failures(pytester):
    (pytester.path / "kfac-xfail.txt").write_text("side-effects/none   # we thought it leaked\n")
    pytester.makepyfile(
        test_mine=f"""
        from kfac_conformance.frontends.pytest_checks import parametrize_with_checks
        from kfac_conformance.reference_candidate import ReferenceCandidate

        @parametrize_with_checks(
            ReferenceCandidate(), profile="quick", select=["{PASSING}"], xfail="kfac-xfail.txt"
        )
        def test_kfac(kfac_check):
            kfac_check()
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rX")
    result.assert_outcomes(xpassed=1)
    assert "we thought it leaked (kfac-xfail.txt:1)" in result.stdout.str()
