"""Every install command the documentation shows works: each runs against a local copy of the
repository, in a fresh virtual environment.

The project is not on PyPI, so a line that installs ``kfac-conformance`` by name cannot work;
the lines install from a checkout (``-e .``) or from the git repository, whose URL the test
points at a local git copy. To stay offline and fast (under a minute here), the fresh
environment sees the third-party packages already installed in the one running the tests (not
this project), pip uses no index (``PIP_NO_INDEX``) and builds without an isolated build
environment (``PIP_NO_BUILD_ISOLATION=0``, setuptools then comes from that environment): each
line resolves, builds and installs exactly as written, and only the downloads are skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest
from test_ci_recipe import workflow_steps

from kfac_conformance.reports import heatmaps

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.DOTALL)
# where install commands are shown to people: the README, the docs, the examples, the HTML page
DOCUMENTS = [
    README,
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.py")),
]
INSTALL = re.compile(r"\bpip3? install\b")
PROJECT_FILES = ("kfac_conformance", "kfac_ref", "__editable__", "kfac-conformance")
tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def documented_install_lines() -> dict[str, list[str]]:
    """Document name -> the install commands it shows, as written."""
    found = {}
    for path in DOCUMENTS:
        lines = [line.strip() for line in path.read_text().splitlines() if INSTALL.search(line)]
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    return found


def readme_install_lines() -> list[str]:
    return [
        line.strip()
        for language, body in FENCE.findall(README.read_text())
        if language == "bash"
        for line in body.splitlines()
        if INSTALL.search(line)
    ]


def html_hint_command() -> str:
    """The command of the HTML page's matplotlib hint (the text before its explanation)."""
    return heatmaps.INSTALL_HINT.split("  (")[0].strip()


def test_every_documented_install_line_is_one_this_test_runs():
    runs = {*readme_install_lines(), *workflow_steps()["Install"]}
    for document, lines in documented_install_lines().items():
        for line in lines:
            assert line in runs, f"{document}: {line!r} is not run by tests/test_install_lines.py"


def test_no_documented_line_installs_the_project_by_name():
    for document, lines in documented_install_lines().items():
        for line in lines:
            for word in shlex.split(line, comments=True):
                if word.startswith("kfac-conformance"):
                    assert f" @ git+{REPOSITORY}" in word, f"{document}: {line!r} installs by name"


class FreshEnvironment:
    """A new virtual environment that sees this environment's third-party packages (read-only,
    behind its own site-packages) but not kfac-conformance, with ``pip`` and ``python`` first on
    its ``PATH``."""

    def __init__(self, folder: Path) -> None:
        self.prefix = folder / "venv"
        venv.create(self.prefix, with_pip=False)
        self.bin = self.prefix / "bin"
        site = Path(
            sysconfig.get_path(
                "purelib", vars={"base": str(self.prefix), "platbase": str(self.prefix)}
            )
        )
        shared = folder / "installed"
        shared.mkdir()
        here = Path(sysconfig.get_path("purelib"))
        for entry in here.iterdir():
            if not entry.name.startswith(PROJECT_FILES) and entry.suffix != ".pth":
                (shared / entry.name).symlink_to(entry)
        (site / "installed-here.pth").write_text(f"{shared}\n")
        pip = self.bin / "pip"
        pip.write_text(f'#!/bin/sh\nexec "{self.bin / "python"}" -m pip "$@"\n')
        pip.chmod(0o755)

    def run(self, command: str, folder: Path) -> subprocess.CompletedProcess:
        environment = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "VIRTUAL_ENV": str(self.prefix),
            "PIP_NO_INDEX": "1",
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        environment.pop("PYTHONPATH", None)
        return subprocess.run(
            ["bash", "-c", command],
            cwd=folder,
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def where(self, module: str, folder: Path) -> str:
        result = self.run(f'python -c "import {module}; print({module}.__file__)"', folder)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def checkout_copy(folder: Path) -> Path:
    """The working tree as a checkout has it: git's files, committed or not, nothing ignored."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    copy = folder / "kfac-conformance"
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def test_the_readme_install_lines_install_the_checkout(tmp_path):
    environment = FreshEnvironment(tmp_path)
    checkout = checkout_copy(tmp_path)
    assert not environment.run("python -c 'import kfac_conformance'", tmp_path).returncode == 0
    lines = readme_install_lines()
    assert len(lines) >= 3
    for line in lines:
        result = environment.run(line, checkout)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    assert environment.where("kfac_conformance", tmp_path).startswith(str(checkout))
    assert environment.run("kfac-conformance list-checks", tmp_path).returncode == 0


def author_repository(folder: Path) -> Path:
    """A library's repository, as ``docs/ci.md`` assumes: ``-e .`` installs it."""
    repository = folder / "author-library"
    (repository / "author_library").mkdir(parents=True)
    (repository / "author_library" / "__init__.py").write_text("")
    (repository / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "author-library"\nversion = "0.1"\n'
    )
    return repository


def test_the_ci_recipe_installs_from_the_git_repository(tmp_path):
    environment = FreshEnvironment(tmp_path)
    clone = checkout_copy(tmp_path)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(clone)]
    # --force: the copy holds exactly the checkout's files, and none may be left out by an
    # ignore pattern (an unanchored "reports/" once dropped conformance/reports/)
    for command in (["init", "-q"], ["add", "--force", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    repository = author_repository(tmp_path)
    install = workflow_steps()["Install"]
    assert sum(f"@ git+{REPOSITORY}" in line for line in install) == 1
    for line in install:
        result = environment.run(
            line.replace(f"git+{REPOSITORY}", f"git+file://{clone}"), repository
        )
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    site = str(environment.prefix)
    assert environment.where("kfac_conformance", repository).startswith(site)
    assert environment.where("author_library", repository).startswith(str(repository))
    assert environment.run("python -c 'import matplotlib'", repository).returncode == 0


def test_the_html_pages_matplotlib_hint_installs_matplotlib(tmp_path):
    environment = FreshEnvironment(tmp_path)
    result = environment.run(html_hint_command(), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert environment.run("python -c 'import matplotlib'", tmp_path).returncode == 0
