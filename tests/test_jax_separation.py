"""The JAX runner stays apart from torch, and the core install from JAX (no JAX needed here).

The runtime proof is ``tests/test_jax_runner.py`` (torch blocked in a subprocess; run by
``nox -s tests_jax`` where torch is not even installed); this is the static half that CI runs.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"kfac_conformance": ROOT / "conformance", "kfac_ref": ROOT / "kfac_ref"}
FORBIDDEN = ("torch", "kfac_ref")


def module_file(name: str) -> Path | None:
    """The source file of a first-party module, ``None`` for third-party ones."""
    top, _, rest = name.partition(".")
    if top not in PACKAGE_DIRS:
        return None
    path = PACKAGE_DIRS[top].joinpath(*rest.split(".")) if rest else PACKAGE_DIRS[top]
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_jax_runner_imports_no_torch_even_indirectly():
    start = sorted((ROOT / "conformance" / "jax").glob("*.py"))
    seen, queue, offenders = set(), list(start), []
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            if name.partition(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
            target = module_file(name)
            if target is not None and target.is_file():
                queue.append(target)
    assert len(seen) > len(start), "the walk follows first-party imports"
    assert not offenders, offenders


def test_the_core_install_pulls_no_jax_and_the_extra_pins_working_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "jax" in d.lower()]
    extra = project["optional-dependencies"]["jax"]
    # kfac-jax 0.0.8 crashes at its first curvature update on jax >= 0.9.2 (docs/findings.md)
    for pin in ("jax==0.9.1", "jaxlib==0.9.1", "kfac-jax==0.0.8"):
        assert pin in extra, (pin, extra)
    assert (
        "kfac_conformance.jax"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )


def test_the_jax_mc_check_is_the_pytorch_one():
    """``mc/unbiased`` of the neutral runner (numpy only: importable here) uses the PyTorch
    check's constants and per-layer tests, on its statistical cases whose target is stored (the
    GGN where every layer is exact, else the reference's type-2 KFAC)."""
    import numpy as np
    import torch

    from kfac_conformance.cases import stored as fixtures
    from kfac_conformance.checks import mc, mc_statistics
    from kfac_conformance.execution.profiles import PROFILES
    from kfac_conformance.neutral import statistics as checks

    assert checks.MC_SEEDS == PROFILES["default"].mc_seeds
    assert checks.UNBIASED_SAMPLES == mc_statistics.UNBIASED_SAMPLES
    generator = np.random.default_rng(0)
    target = generator.normal(size=6)
    estimates = target + 0.3 * generator.normal(size=(checks.MC_SEEDS, 6))
    block = mc_statistics.block_statistics(
        mc_statistics.BlockEstimates("0", "expand", torch.tensor(estimates), torch.tensor(target))
    )
    tests, ratio = checks.unbiased_tests("0", estimates, target)
    assert [t.name for t in tests] == [t.name for t in block.tests()]
    assert [value for t in tests for value in (t.statistic, t.p)] == pytest.approx(
        [value for t in block.tests() for value in (t.statistic, t.p)], rel=1e-12
    )
    assert ratio == pytest.approx(block.mean_ratio, rel=1e-12)
    index = fixtures.load_index()["cases"]
    target_stored = {
        case_id
        for case_id, record in index.items()
        if set(record["exact"].get("type-2/expand", [])) == set(record["layers"])
        or "type-2" in record.get("reference", {}).get("kfac", [])
    }
    assert set(checks.MC_CASE_IDS) == mc.STATISTICAL_CASE_IDS & target_stored


def test_the_jax_runner_names_the_stored_cases_its_network_cannot_build():
    """The new layers' stored cases (issue 22) are refused by kfac-jax's candidate with the
    kinds named, and the grouped convolutions' cases with the grouped specs named; every
    other stored case is built (numpy only: importable here)."""
    from kfac_conformance.cases.architectures import PARAMETER_KINDS
    from kfac_conformance.jax import kinds
    from kfac_conformance.neutral import fixtures as stored

    assert set(PARAMETER_KINDS) - kinds.KINDS == {"conv1d", "conv3d", "embedding"}
    refused = 0
    for case_id in stored.case_ids():
        architecture = stored.load(case_id).architecture
        beyond = {spec[0] for spec in architecture} - kinds.KINDS
        grouped = [spec for spec in architecture if spec[0] == "conv2d" and len(spec) > 8]
        reason = kinds.unsupported(architecture)
        assert (reason is None) == (not beyond and not grouped), case_id
        assert all(kind in (reason or "") for kind in beyond), case_id
        assert all(str(list(spec)) in (reason or "") for spec in grouped) or beyond, case_id
        refused += bool(beyond or grouped)
    assert refused == 7 + 3  # the new layers' cases, then the grouped convolutions'


def test_the_runner_asks_for_its_devices_and_keeps_a_count_the_user_set(monkeypatch):
    """No JAX needed: the flag is an environment variable that JAX reads when it starts."""
    from kfac_conformance.jax.devices import HOST_DEVICE_FLAG, request_host_devices

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    request_host_devices(4)
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {HOST_DEVICE_FLAG}=4"
    monkeypatch.setenv("XLA_FLAGS", f"{HOST_DEVICE_FLAG}=1")
    request_host_devices(4)
    assert os.environ["XLA_FLAGS"] == f"{HOST_DEVICE_FLAG}=1"
    monkeypatch.delenv("XLA_FLAGS")
    request_host_devices(2)
    assert os.environ["XLA_FLAGS"] == f"{HOST_DEVICE_FLAG}=2"
