"""The package as users get it: build the sdist and the wheel, check their metadata, install the
wheel into a fresh virtual environment outside the checkout, and run the suite from there.

Usage (from any Python with ``build`` installed; ``nox -s wheel`` and ``.ci/run`` call it)::

    python scripts/check_wheel.py [--keep]

Steps, each failing with a message that names what is wrong:

1. ``python -m build`` writes the sdist and the wheel into a temporary folder.
2. The wheel's metadata must declare the MIT license by SPDX expression, ship ``LICENSE``, and
   carry the project URLs and the classifiers; the sdist must ship ``LICENSE`` and the stored
   fixtures; the wheel must hold every package of the checkout (pyproject.toml lists them).
3. A fresh virtual environment in the temporary folder gets torch (with ``constraints.txt``)
   and the wheel, and, from the temporary folder, runs
   ``kfac-conformance run --candidate kfac_ref --profile quick`` and
   ``pytest --kfac-candidate kfac_ref`` (``--pytest-profile``, default ``default``), after making sure that ``kfac_conformance`` is
   imported from the environment, not from the checkout.
"""

from __future__ import annotations

import argparse
import email.parser
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
# the folders of the import packages and the names they install under (pyproject's package-dir)
PACKAGE_ROOTS = {"conformance": "kfac_conformance", "kfac_ref": "kfac_ref"}
REQUIRED_URLS = ("Homepage", "Repository", "Issues")
REQUIRED_CLASSIFIERS = (
    "Framework :: Pytest",
    "Programming Language :: Python :: 3",
    "Topic :: Software Development :: Testing",
)


class PackageError(Exception):
    """The built package is not what users should get."""


def run(command: list[str], cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def build(output: Path) -> tuple[Path, Path]:
    run([sys.executable, "-m", "build", "--outdir", str(output), str(ROOT)], cwd=ROOT)
    (sdist,) = output.glob("*.tar.gz")
    (wheel,) = output.glob("*.whl")
    return sdist, wheel


def check_metadata(wheel: Path, sdist: Path) -> list[str]:
    """What is wrong with the metadata (an empty list when nothing is)."""
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        if not licenses:
            problems.append("the wheel does not ship LICENSE in .dist-info/licenses/")
        elif "MIT License" not in archive.read(licenses[0]).decode():
            problems.append("the wheel's LICENSE is not the MIT license")
        if not any(n.startswith("kfac_conformance/fixture_data/") for n in names):
            problems.append("the wheel does not ship the stored fixtures")
    if metadata.get("License-Expression") != "MIT":
        problems.append(f"License-Expression is {metadata.get('License-Expression')!r}, not 'MIT'")
    if "LICENSE" not in (metadata.get_all("License-File") or []):
        problems.append("License-File does not name LICENSE")
    urls = dict(
        (part.strip() for part in url.split(",", 1))
        for url in metadata.get_all("Project-URL") or []
    )
    for label in REQUIRED_URLS:
        if not urls.get(label, "").startswith("https://"):
            problems.append(f"Project-URL {label!r} is missing or not https")
    classifiers = metadata.get_all("Classifier") or []
    problems += [
        f"classifier {c!r} is missing" for c in REQUIRED_CLASSIFIERS if c not in classifiers
    ]
    if "report" not in (metadata.get_all("Provides-Extra") or []):
        problems.append("the extra 'report' (matplotlib for the heatmaps) is missing")
    with tarfile.open(sdist) as archive:
        members = {
            Path(name).relative_to(Path(name).parts[0]).as_posix()
            for name in archive.getnames()
            if "/" in name
        }
    problems += [
        f"the sdist lacks {name}"
        for name in ("LICENSE", "fixtures/cases.json")
        if name not in members
    ]
    return problems


def missing_packages(wheel: Path, root: Path = ROOT) -> list[str]:
    """The packages of the checkout at ``root`` (every folder under :data:`PACKAGE_ROOTS` that
    holds Python modules) that the wheel lacks; an empty list when it holds them all."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    problems = []
    for folder, name in PACKAGE_ROOTS.items():
        for package in sorted({module.parent for module in (root / folder).rglob("*.py")}):
            if package.name == "__pycache__":
                continue
            inside = package.relative_to(root / folder).parts
            wheel_folder = PurePosixPath(name, *inside)
            modules = [wheel_folder / module.name for module in package.glob("*.py")]
            if not all(str(module) in shipped for module in modules):
                problems.append(
                    f"the wheel lacks the package {'.'.join((name, *inside))} "
                    f"({package.relative_to(root).as_posix()}/): list it in pyproject.toml "
                    "under [tool.setuptools] packages"
                )
    return problems


def install_and_run(wheel: Path, folder: Path, pytest_profile: str) -> None:
    environment = folder / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    constraints = str(ROOT / "constraints.txt")
    run([python, "-m", "pip", "install", "-q", "-c", constraints, "torch"], cwd=folder)
    run([python, "-m", "pip", "install", "-q", "-c", constraints, str(wheel)], cwd=folder)
    where = subprocess.run(
        [python, "-c", "import kfac_conformance; print(kfac_conformance.__file__)"],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(environment):
        raise PackageError(f"kfac_conformance was imported from {where}, not from the wheel")
    bin_folder = environment / "bin"
    run(
        [
            str(bin_folder / "kfac-conformance"),
            "run",
            "--candidate",
            "kfac_ref",
            "--profile",
            "quick",
            "-q",
        ],
        cwd=folder,
    )
    run(
        [
            str(bin_folder / "pytest"),
            "--kfac-candidate",
            "kfac_ref",
            "-q",
            "-p",
            "no:cacheprovider",
            "--kfac-profile",
            pytest_profile,
        ],
        cwd=folder,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--pytest-profile",
        default="default",
        help="the profile of the pytest run (.ci/run takes 'quick' to save time)",
    )
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="kfac-conformance-wheel-"))
    try:
        sdist, wheel = build(folder / "dist")
        problems = check_metadata(wheel, sdist) + missing_packages(wheel)
        if problems:
            raise PackageError("; ".join(problems))
        print(f"metadata of {wheel.name} and {sdist.name}: ok", flush=True)
        install_and_run(wheel, folder, args.pytest_profile)
    except (PackageError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print("the wheel installs into a fresh environment and passes from outside the checkout")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
