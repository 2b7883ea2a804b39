"""pytest front end: ``pytest --kfac-candidate SPEC`` runs the catalogue as ordinary tests.

Each (check, case) pair becomes one test named ``check_id[case_id]``, so ``-k``, ``-x``,
``--junitxml`` and ``-n 2`` (pytest-xdist) work. To parametrize a test of your own instead,
see :mod:`kfac_conformance.frontends.pytest_checks`.

The checks run in pytest's process, like any test: against a candidate that may crash its
process, run with pytest-xdist (``-n 1`` or more), which replaces a crashed worker and reports
its item as failed (docs/robustness.md); the CLI supervises its own worker instead.

pytest loads this module in every run of every project where kfac-conformance is installed,
so it imports nothing heavy (no torch) until ``--kfac-candidate`` is given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kfac_conformance.execution.profiles import PROFILES


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kfac-conformance")
    group.addoption(
        "--kfac-candidate", metavar="SPEC", help="run the KFAC conformance checks against SPEC"
    )
    group.addoption("--kfac-profile", default="default", choices=sorted(PROFILES))
    group.addoption(
        "--kfac-case", action="append", default=[], metavar="SPEC", help="extra problems"
    )
    group.addoption("--kfac-xfail", metavar="FILE", help="expected-failures file of the candidate")
    group.addoption(
        "--kfac-fuzz",
        action="store_true",
        help="also run the fuzzer (kfac-conformance fuzz) as one test per property",
    )
    group.addoption("--kfac-fuzz-examples", type=int, default=100, metavar="N")
    group.addoption("--kfac-fuzz-seed", type=int, default=0, metavar="N")


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("--kfac-candidate", default=None))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # With --kfac-candidate and no explicit paths, collect only the catalogue.
    if _active(config) and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


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


# first, so that -k, -m and the other plugins' hooks see the checks like collected tests
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list
) -> None:
    if not _active(config):
        return
    # Collection runs where the checks run (in each worker under pytest-xdist, never in its
    # controller, which so never imports torch).
    import torch

    from kfac_conformance.contract.loading import load_candidate
    from kfac_conformance.frontends.pytest_checks import conformance_checks

    # the problems are tiny: a second intra-op thread only adds synchronisation
    torch.set_num_threads(1)
    candidate = load_candidate(config.getoption("--kfac-candidate"))
    checks = conformance_checks(
        candidate,
        profile=config.getoption("--kfac-profile"),
        cases=config.getoption("--kfac-case"),
        xfail=config.getoption("--kfac-xfail"),
    )
    catalogue = []
    for check in checks:
        item = ConformanceItem.from_parent(session, name=check.item.id, check=check)
        # with pytest-xdist's --dist loadgroup, a case's checks share one worker and its caches
        item.add_marker(pytest.mark.xdist_group(check.item.entry.id))
        catalogue.append(item)
    if config.getoption("--kfac-fuzz"):
        from kfac_conformance.frontends.pytest_fuzz import fuzz_tests

        tests = fuzz_tests(
            candidate,
            config.getoption("--kfac-fuzz-examples"),
            config.getoption("--kfac-fuzz-seed"),
        )
        for name, test in tests.items():
            catalogue.append(ConformanceItem.from_parent(session, name=name, check=test))
    items.extend(catalogue)
    # counted as collected ("collected N items", --collect-only) like tests found in files
    config.hook.pytest_collectreport(
        report=pytest.CollectReport(session.nodeid, "passed", None, catalogue)
    )
