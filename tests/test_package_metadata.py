"""scripts/check_wheel.py's checks: the metadata, on hand-made archives (the full build and
install run in ``nox -s wheel`` and ``.ci/run``), and the packages, on wheels built here from a
copy of the project."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD_METADATA = """Metadata-Version: 2.4
Name: kfac-conformance
License-Expression: MIT
License-File: LICENSE
Project-URL: Homepage, https://example.org/kfac
Project-URL: Repository, https://example.org/kfac.git
Project-URL: Issues, https://example.org/kfac/issues
Classifier: Framework :: Pytest
Classifier: Programming Language :: Python :: 3
Classifier: Topic :: Software Development :: Testing
Provides-Extra: report
"""


def check_wheel():
    spec = importlib.util.spec_from_file_location("check_wheel", ROOT / "scripts/check_wheel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def archives(tmp_path: Path, metadata: str, sdist_files=("LICENSE", "fixtures/cases.json")):
    wheel = tmp_path / "kfac_conformance-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("kfac_conformance-0.1.0.dist-info/METADATA", metadata)
        archive.writestr("kfac_conformance-0.1.0.dist-info/licenses/LICENSE", "MIT License\n")
        archive.writestr("kfac_conformance/fixture_data/cases.json", "{}")
    sdist = tmp_path / "kfac_conformance-0.1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in sdist_files:
            info = tarfile.TarInfo(f"kfac_conformance-0.1.0/{name}")
            archive.addfile(info, io.BytesIO(b""))
    return wheel, sdist


def test_complete_metadata_passes(tmp_path):
    assert check_wheel().check_metadata(*archives(tmp_path, GOOD_METADATA)) == []


@pytest.mark.parametrize(
    ("remove", "problem"),
    [
        ("License-Expression: MIT\n", "License-Expression is None, not 'MIT'"),
        ("License-File: LICENSE\n", "License-File does not name LICENSE"),
        ("Project-URL: Issues, https://example.org/kfac/issues\n", "Project-URL 'Issues'"),
        ("Classifier: Framework :: Pytest\n", "classifier 'Framework :: Pytest' is missing"),
        ("Provides-Extra: report\n", "the extra 'report'"),
    ],
)
def test_each_missing_field_is_named(tmp_path, remove, problem):
    problems = check_wheel().check_metadata(*archives(tmp_path, GOOD_METADATA.replace(remove, "")))
    assert len(problems) == 1 and problem in problems[0]


def test_an_sdist_without_the_license_is_caught(tmp_path):
    wheel, sdist = archives(tmp_path, GOOD_METADATA, sdist_files=("fixtures/cases.json",))
    assert check_wheel().check_metadata(wheel, sdist) == ["the sdist lacks LICENSE"]


def copy_of_the_project(destination: Path) -> Path:
    """What the build reads, without caches or earlier build output."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        destination.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, destination / name)
    for folder in ("conformance", "kfac_ref", "fixtures"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(ROOT / folder, destination / folder, ignore=ignore)
    return destination


def build_wheel(project: Path, output: Path) -> Path:
    """The wheel of ``project``, built offline with the setuptools installed here."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    completed = subprocess.run(
        [*command, "-w", str(output), str(project)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (wheel,) = output.glob("*.whl")
    return wheel


def test_the_wheel_holds_every_package(tmp_path):
    project = copy_of_the_project(tmp_path / "project")
    packages = {path.parent for path in project.glob("conformance/**/*.py")}
    assert project / "conformance/reports" in packages and len(packages) > 10
    wheel = build_wheel(project, tmp_path / "dist")
    assert check_wheel().missing_packages(wheel, project) == []


def test_a_package_left_out_of_pyproject_is_named(tmp_path):
    project = copy_of_the_project(tmp_path / "project")
    pyproject = project / "pyproject.toml"
    listed = '    "kfac_conformance.reports",\n'
    assert listed in pyproject.read_text()
    pyproject.write_text(pyproject.read_text().replace(listed, ""))
    wheel = build_wheel(project, tmp_path / "dist")
    assert check_wheel().missing_packages(wheel, project) == [
        "the wheel lacks the package kfac_conformance.reports (conformance/reports/): "
        "list it in pyproject.toml under [tool.setuptools] packages"
    ]
