"""pytest front end: ``pytest --kfac-candidate SPEC`` runs the catalogue as ordinary tests.

Each (check, case) pair becomes one test named ``check_id[case_id]``, so ``-k``, ``-x``,
``--junitxml`` and ``-n 2`` (pytest-xdist) work, and ``-m`` selects families: every item
carries its family's marker, ``kfac_<family>`` (``kfac_side_effects`` for ``side-effects``),
and the fuzzer's tests ``kfac_fuzz`` as well. Without ``--kfac-candidate``, the environment
variable ``KFAC_CONFORMANCE_CANDIDATE`` names the candidate. An expected failure
(``--kfac-xfail``) that passes shows as XPASS, and fails the run under ``--kfac-strict-xfail``
(or the ini option ``kfac_strict_xfail``, or pytest's ``xfail_strict``). To parametrize a test
of your own instead, see :mod:`kfac_conformance.frontends.pytest_checks`.

The checks run in pytest's process, like any test: against a candidate that may crash its
process, run with pytest-xdist (``-n 1`` or more), which replaces a crashed worker and reports
its item as failed (docs/robustness.md); the CLI supervises its own worker instead.

pytest loads this module in every run of every project where kfac-conformance is installed,
so it imports nothing heavy (no torch) until a candidate is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kfac_conformance.contract.expected_failures import UnmatchedExpectedFailure
from kfac_conformance.execution.profiles import PROFILES
from kfac_conformance.frontends.environment import CANDIDATE_VARIABLE, candidate_from_environment

if TYPE_CHECKING:
    from kfac_conformance.contract.problem import Candidate
    from kfac_conformance.frontends.pytest_checks import KfacCheck

FUZZ_MARKER = "kfac_fuzz"
_CANDIDATE = pytest.StashKey["Candidate"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kfac-conformance")
    group.addoption(
        "--kfac-candidate",
        metavar="SPEC",
        help=f"run the KFAC conformance checks against SPEC (default: ${CANDIDATE_VARIABLE})",
    )
    group.addoption("--kfac-profile", default="default", choices=sorted(PROFILES))
    group.addoption(
        "--kfac-case", action="append", default=[], metavar="SPEC", help="extra problems"
    )
    group.addoption("--kfac-xfail", metavar="FILE", help="expected-failures file of the candidate")
    group.addoption(
        "--kfac-strict-xfail",
        action="store_true",
        help="an expected failure that passes (XPASS) fails the run (ini: kfac_strict_xfail)",
    )
    parser.addini(
        "kfac_strict_xfail",
        type="bool",
        default=False,
        help="an expected failure of the KFAC conformance checks that passes fails the run",
    )
    group.addoption(
        "--kfac-fuzz",
        action="store_true",
        help="also run the fuzzer (kfac-conformance fuzz) as one test per property",
    )
    group.addoption("--kfac-fuzz-examples", type=int, default=100, metavar="N")
    group.addoption("--kfac-fuzz-seed", type=int, default=0, metavar="N")


def candidate_spec(config: pytest.Config) -> str | None:
    """``--kfac-candidate``, else the environment variable; ``None``: the plugin stays idle."""
    return config.getoption("--kfac-candidate", default=None) or candidate_from_environment()


def family_marker(family: str) -> str:
    """The marker of a check family: ``-m`` takes names, so ``side-effects`` is spelled
    ``kfac_side_effects``."""
    return "kfac_" + family.replace("-", "_")


def pytest_configure(config: pytest.Config) -> None:
    if candidate_spec(config) is None:
        return
    xfail = config.getoption("--kfac-xfail")
    if xfail and not Path(xfail).is_file():
        raise pytest.UsageError(f"--kfac-xfail: expected-failures file {xfail!r} does not exist")
    from kfac_conformance.checks.catalogue import ALL_CHECKS

    for family in dict.fromkeys(check.family for check in ALL_CHECKS):
        config.addinivalue_line(
            "markers", f"{family_marker(family)}: the KFAC conformance checks of family {family}"
        )
    config.addinivalue_line(
        "markers", f"{FUZZ_MARKER}: the KFAC conformance fuzzer's properties (--kfac-fuzz)"
    )


def _candidate(config: pytest.Config) -> Candidate:
    """The candidate, loaded once per process (the header and the collection share it)."""
    if _CANDIDATE not in config.stash:
        import torch

        from kfac_conformance.contract.loading import SpecError, load_candidate

        # the problems are tiny: a second intra-op thread only adds synchronisation
        torch.set_num_threads(1)
        try:
            config.stash[_CANDIDATE] = load_candidate(candidate_spec(config))
        except SpecError as error:
            raise pytest.UsageError(str(error)) from None
    return config.stash[_CANDIDATE]


def _strict_xfail(config: pytest.Config) -> bool | None:
    """``True`` when asked for; ``None`` leaves it to pytest's own ``xfail_strict``."""
    asked = config.getoption("--kfac-strict-xfail") or config.getini("kfac_strict_xfail")
    return True if asked else None


def pytest_report_header(config: pytest.Config) -> list[str]:
    spec = candidate_spec(config)
    if spec is None:
        return []
    from kfac_conformance.contract.loading import suite_version

    candidate = _candidate(config)
    given = f"--kfac-candidate {spec}" if config.getoption("--kfac-candidate") else None
    version = getattr(candidate, "version", None) or "no version declared"
    conventions = candidate.capabilities.conventions.describe()
    lines = [
        f"kfac-conformance {suite_version()}, profile {config.getoption('--kfac-profile')}",
        f"candidate: {candidate.name} ({version}), from {given or f'{CANDIDATE_VARIABLE}={spec}'}",
        "conventions: " + ", ".join(f"{field}={value}" for field, value in conventions.items()),
    ]
    xfail = config.getoption("--kfac-xfail")
    if xfail:
        strict = " (strict: an XPASS fails)" if _strict_xfail(config) else ""
        lines.append(f"expected failures: {xfail}{strict}")
    return lines


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With a candidate and no explicit paths, collect only the catalogue.
    if candidate_spec(config) and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


def _warns_at_collection(config: pytest.Config) -> bool:
    """Each pytest-xdist worker collects the same catalogue, and the controller shows their
    warnings: only the first worker's, so that each shows once (every worker still raises
    the warnings that the filters make errors, so that all collect alike)."""
    worker = getattr(config, "workerinput", None)
    return worker is None or worker["workerid"] == "gw0"


class ConformanceItem(pytest.Item):
    def __init__(self, *, check, **kwargs) -> None:
        super().__init__(**kwargs)
        self.check = check

    def runtest(self) -> None:
        self.check()

    def repr_failure(self, excinfo, style=None):
        from kfac_conformance.frontends.pytest_checks import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"kfac-conformance: {self.name}"


def _checks(
    session: pytest.Session, config: pytest.Config, candidate: Candidate
) -> list[KfacCheck] | None:
    """The catalogue's :class:`KfacCheck` objects; ``None`` after reporting a collection error."""
    from kfac_conformance.frontends.pytest_checks import conformance_checks

    xfail = config.getoption("--kfac-xfail")
    # record=True drops the warnings shown, and keeps those the filters make errors
    with warnings.catch_warnings(record=not _warns_at_collection(config)):
        try:
            return conformance_checks(
                candidate,
                profile=config.getoption("--kfac-profile"),
                cases=config.getoption("--kfac-case"),
                xfail=xfail,
            )
        except UnmatchedExpectedFailure as error:  # raised by a warning filter ("error")
            # a collection error: pytest-xdist reports it from a worker, a UsageError it drops
            failure = f"--kfac-xfail {xfail}: {error}"
            report = pytest.CollectReport(session.nodeid, "failed", failure, [])
            config.hook.pytest_collectreport(report=report)
            return None


def _fuzz_items(
    session: pytest.Session, config: pytest.Config, candidate: Candidate
) -> list[ConformanceItem]:
    from kfac_conformance.frontends.pytest_fuzz import fuzz_tests

    tests = fuzz_tests(
        candidate, config.getoption("--kfac-fuzz-examples"), config.getoption("--kfac-fuzz-seed")
    )
    items = []
    for name, test in tests.items():
        item = ConformanceItem.from_parent(session, name=name, check=test)
        item.add_marker(FUZZ_MARKER)
        item.add_marker(family_marker(name.removeprefix("fuzz/").split("/")[0]))
        items.append(item)
    return items


# first, so that -k, -m and the other plugins' hooks see the checks like collected tests
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list
) -> None:
    if candidate_spec(config) is None:
        return
    # Collection runs where the checks run: in each worker under pytest-xdist.
    candidate = _candidate(config)
    checks = _checks(session, config, candidate)
    if checks is None:
        return
    strict_xfail = _strict_xfail(config)
    grouped = config.pluginmanager.hasplugin("xdist")
    catalogue = []
    for check in checks:
        item = ConformanceItem.from_parent(session, name=check.item.id, check=check)
        item.add_marker(family_marker(check.item.check.family))
        for mark in check.marks(strict_xfail):
            item.add_marker(mark)
        if grouped:
            # with pytest-xdist's --dist loadgroup, a case's checks share one worker and its caches
            item.add_marker(pytest.mark.xdist_group(check.item.entry.id))
        catalogue.append(item)
    if config.getoption("--kfac-fuzz"):
        catalogue += _fuzz_items(session, config, candidate)
    items.extend(catalogue)
    # counted as collected ("collected N items", --collect-only) like tests found in files
    config.hook.pytest_collectreport(
        report=pytest.CollectReport(session.nodeid, "passed", None, catalogue)
    )
