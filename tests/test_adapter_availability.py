"""A registered adapter whose library is absent is refused once, when it is loaded, with the
command that installs it; ``candidate_availability`` says which adapters can run."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from kfac_conformance.contract.loading import (
    LibraryMissing,
    Requirement,
    SpecError,
    candidate_availability,
    load_candidate,
    registered_candidates,
)

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def requirement_of(name: str) -> Requirement | None:
    return getattr(registered_candidates()[name].load(), "requires", None)


def installed(distribution: str) -> bool:
    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


ADAPTERS = sorted(name for name in registered_candidates() if requirement_of(name) is not None)
ABSENT = [
    name
    for name in ADAPTERS
    if not all(installed(distribution) for distribution in requirement_of(name).distributions)
]


def test_every_registered_candidate_but_the_reference_declares_its_library():
    assert set(registered_candidates()) - set(ADAPTERS) == {"kfac_ref"}
    assert len(ADAPTERS) >= 13


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_declared_extra_installs_the_library(name):
    requirement = requirement_of(name)
    # the first distribution is the library itself; later ones are its backends' packages,
    # which it depends on
    pins = EXTRAS[requirement.extra]
    assert any(re.match(rf"{re.escape(requirement.distributions[0])}\b", pin) for pin in pins)
    assert requirement.install_command() == (
        f'pip install -c constraints.txt -e ".[{requirement.extra}]"'
    )


@pytest.mark.parametrize("name", ADAPTERS)
def test_loading_an_adapter_checks_its_library(name):
    requirement = requirement_of(name)
    if name not in ABSENT:
        assert load_candidate(name).name == name
        return
    with pytest.raises(LibraryMissing) as refused:
        load_candidate(name)
    message = str(refused.value)
    assert isinstance(refused.value, SpecError)  # the CLI's usage error: exit status 2
    assert "\n" not in message
    assert message.endswith(requirement.install_command())
    missing = [d for d in requirement.distributions if not installed(d)]
    assert f"candidate {name!r} needs {', '.join(missing)}, which is not installed" in message


def test_a_candidate_loaded_by_path_is_checked_as_well(tmp_path):
    (tmp_path / "needs_library.py").write_text(
        "from kfac_conformance.contract.loading import Requirement\n"
        "from kfac_conformance.reference_candidate import ReferenceCandidate\n\n"
        "class Candidate(ReferenceCandidate):\n"
        "    requires = Requirement(('kfac-conformance-no-such-distribution',), 'report')\n"
    )
    with pytest.raises(LibraryMissing, match="kfac-conformance-no-such-distribution"):
        load_candidate(f"{tmp_path / 'needs_library.py'}:Candidate")


def test_availability_lists_every_registered_candidate_with_its_version_or_absence():
    availability = candidate_availability()
    assert list(availability) == sorted(registered_candidates())
    assert availability["kfac_ref"] == "built in"
    for name in ADAPTERS:
        requirement = requirement_of(name)
        if name in ABSENT:
            assert availability[name].startswith("not installed: ")
            assert availability[name].endswith(f"({requirement.install_command()})")
        else:
            expected = ", ".join(f"{d} {version(d)}" for d in requirement.distributions)
            assert availability[name] == expected


@pytest.mark.skipif(not ABSENT, reason="every adapter's library is installed here")
@pytest.mark.parametrize("command", ["run", "fuzz"])
def test_the_command_line_exits_2_with_the_install_line(command):
    name = ABSENT[0]
    result = subprocess.run(
        [sys.executable, "-m", "kfac_conformance.frontends.cli", command, "--candidate", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith(requirement_of(name).install_command())
    assert result.stdout == ""


@pytest.mark.skipif(not ABSENT, reason="every adapter's library is installed here")
def test_the_pytest_plugin_stops_with_a_usage_error_and_the_install_line(tmp_path):
    name = ABSENT[0]
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--kfac-candidate", name, "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ERROR: ")
    assert line.endswith(requirement_of(name).install_command())
    assert "Traceback" not in result.stdout + result.stderr
