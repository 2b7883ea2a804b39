"""The MLX runner stays apart from torch and JAX, and the core install from MLX (no MLX needed
here: these tests run in the project's own environment).

The runtime proof with MLX is ``tests/test_mlx_runner.py`` (torch and JAX blocked in a
subprocess; run by ``nox -s tests_mlx``, where neither is installed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
from import_blocking import blocking_prelude
from test_jax_separation import imported_modules, module_file
from test_matrix_page import generator, report

ROOT = Path(__file__).resolve().parents[1]
MLX_RUNNER = ROOT / "conformance" / "mlx"


def first_party_closure(start: list[Path]) -> dict[Path, set[str]]:
    """Every first-party module reached from ``start`` by imports, with what it imports."""
    seen: dict[Path, set[str]] = {}
    queue = list(start)
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen[path] = imported_modules(path)
        for name in seen[path]:
            target = module_file(name)
            if target is not None and target.is_file():
                queue.append(target)
    return seen


def offenders(closure: dict[Path, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path, names in closure.items()
        for name in names
        if name.partition(".")[0] in forbidden
    ]


def test_the_mlx_runner_imports_neither_torch_nor_jax_even_indirectly():
    start = sorted(MLX_RUNNER.glob("*.py"))
    closure = first_party_closure(start)
    assert len(closure) > len(start), "the walk follows first-party imports"
    assert not offenders(closure, ("torch", "kfac_ref", "jax", "jaxlib", "kfac_jax"))


def test_the_registry_and_the_command_line_import_no_mlx():
    """MLX is imported only when a candidate is loaded, so a missing MLX is a clear
    ImportError of that candidate, not of the runner."""
    closure = first_party_closure([MLX_RUNNER / "runner.py", MLX_RUNNER / "__main__.py"])
    assert not offenders(closure, ("mlx", "mlx_kfac"))


def test_the_command_line_runs_without_mlx_and_the_candidate_names_what_is_missing():
    prelude = blocking_prelude("mlx", "mlx_kfac", "torch", "jax")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            prelude + "import runpy; runpy.run_module('kfac_conformance.mlx', run_name='__main__')",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--candidate" in done.stdout
    load = (
        "from kfac_conformance.mlx.runner import CANDIDATES\n"
        "from kfac_conformance.neutral.runner import load_candidate\n"
        "load_candidate('mlx-kfac', CANDIDATES)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + load], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "ImportError: mlx" in done.stderr, done.stderr


def test_the_core_install_pulls_no_mlx_and_the_extra_pins_it():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert not [d for d in project["dependencies"] if "mlx" in d.lower()]
    assert project["optional-dependencies"]["mlx"] == ["mlx[cpu]==0.32.4", "mlx-kfac==0.4.0"]
    assert "kfac_conformance.mlx" in pyproject["tool"]["setuptools"]["packages"]


def test_the_matrix_gives_mlx_kfac_a_column_and_names_the_mlx_version():
    mlx_report = {**report("mlx-kfac", ["passed", "skipped"]), "torch_version": "not used"}
    mlx_report["mlx_version"] = "0.32.4"
    torch_report = {**report("kfac_ref", ["passed", "passed"]), "torch_version": "2.13.0"}
    page = generator().render([torch_report, mlx_report])
    assert "| check | kfac_ref | mlx-kfac |" in page
    assert "torch: 2.13.0. mlx: 0.32.4 (MLX runner:" in page
