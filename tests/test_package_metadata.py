"""scripts/check_wheel.py's metadata check, on hand-made archives (the real build runs in
``nox -s wheel`` and ``.ci/run``)."""

from __future__ import annotations

import importlib.util
import io
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
