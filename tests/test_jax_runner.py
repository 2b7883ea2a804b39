"""The JAX runner: kfac-jax against the stored fixtures, with no torch in the process.

Skips without the optional extra ``jax`` (run it with ``nox -s tests_jax``, which installs no
torch at all).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kfac_conformance.jax.devices import request_host_devices
from kfac_conformance.neutral.checks import WORLD_SIZES

# as `python -m kfac_conformance.jax` does, before anything starts JAX's backend
request_host_devices(max(WORLD_SIZES))
pytest.importorskip(
    "jax", reason="the JAX runner needs the optional extra 'jax' (nox -s tests_jax)"
)
pytest.importorskip("kfac_jax", reason="the JAX runner needs kfac-jax (nox -s tests_jax)")

import jax.numpy as jnp  # noqa: E402
from import_blocking import blocking_prelude  # noqa: E402
from jax_mutants import DISTRIBUTED_MUTANTS, MUTANTS  # noqa: E402

from kfac_conformance.contract.expected_failures import read_expected_failures  # noqa: E402
from kfac_conformance.jax import kinds, network, runner  # noqa: E402
from kfac_conformance.jax.devices import HOST_DEVICE_FLAG  # noqa: E402
from kfac_conformance.jax.kfac_jax_candidate import _torch_patch_order  # noqa: E402
from kfac_conformance.neutral import fixtures  # noqa: E402

ZOO = Path(__file__).parent / "zoo"
# items of the stored cases that kfac-jax must pass: one per loss and reduction, several
# batches, convolutions (one with several taps and channels), agreement; each takes seconds
PASSING = [
    "exactness/type-2-expand[one-datum-mlp[tanh-ce-mean]]",
    "exactness/type-2-expand[one-datum-mlp[sigmoid-bce-mean]]",
    "exactness/type-2-expand[one-datum-mlp[relu-mse-sum]]",
    "exactness/empirical-expand[one-datum-mlp[tanh-ce-sum]]",
    "exactness/type-2-expand[deep-linear[mse-mean-3batches]]",
    "exactness/type-2-expand[conv-expand[1x1-per-pixel-mse]]",
    "exactness/type-2-expand[conv-expand[last-layer-2x2-multichannel-tanh]]",
    # against the reference's stored answers; on the CNN kfac-jax refuses reduce, runs expand
    "agreement/type-2[mlp[tanh-ce-batch]]",
    "agreement/type-2[cnn[relu-ce]]",
    # its own answers to transformed stored cases (type-2, MC with one seed, empirical)
    "invariance/mean-vs-sum[deep-linear[mse-mean-3batches]]",
]
# data-parallel kfac-jax on host devices: type-2 over two batches, and on a convolution
DISTRIBUTED_PASSING = [
    "distributed/kfac-type-2[mlp[tanh-ce-batch]]",
    "distributed/kfac-type-2[cnn[relu-ce]]",
]
# the cheapest distributed item (one batch of 4 data), for the runs in a fresh process
ONE_DISTRIBUTED = "distributed/kfac-type-2[reduce-deep-linear[mean-pool]]"
XFAIL = Path(__file__).parents[1] / "conformance" / "adapters" / "xfail" / "kfac-jax.txt"
BLOCK_TORCH = blocking_prelude("torch")


def run_items(spec: str, item_ids: list[str], expected=()) -> dict[str, dict]:
    items = [item for item in runner.plan() if item.id in item_ids]
    assert len(items) == len(item_ids), f"not all of {item_ids} are planned"
    document = runner.run(spec, items, expected)
    return {result["id"]: result for result in document["results"]}


def run_module(tmp_path: Path, item_ids: list[str], prelude: str, env: dict) -> dict:
    """``python -m kfac_conformance.jax`` on ``item_ids`` in a fresh process; its report."""
    report = tmp_path / "kfac-jax.json"
    items = [option for item in item_ids for option in ("--item", item)]
    code = prelude + textwrap.dedent(f"""
        import runpy
        sys.argv = ["kfac_conformance.jax", "--candidate", "kfac-jax", *{items!r},
                    "--report-json", {str(report)!r}]
        try:
            runpy.run_module("kfac_conformance.jax", run_name="__main__")
        except SystemExit as exit:
            print("torch imported:", "torch" in sys.modules)
            raise
        """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch imported: False" in done.stdout
    return json.loads(report.read_text())


def test_the_runner_works_with_torch_unimportable_and_starts_its_devices(tmp_path: Path):
    """Without XLA_FLAGS in its environment, the runner asks for the devices itself."""
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    document = run_module(tmp_path, [PASSING[0], ONE_DISTRIBUTED], BLOCK_TORCH, env)
    assert document["schema_version"] == 1 and document["complete"]
    assert document["torch_version"] == "not used"
    assert [r["status"] for r in document["results"]] == ["passed", "passed"]


def test_too_few_devices_skip_the_distributed_items_naming_the_flag(tmp_path: Path):
    env = {**os.environ, "XLA_FLAGS": f"{HOST_DEVICE_FLAG}=1"}  # the user's count is kept
    document = run_module(tmp_path, [ONE_DISTRIBUTED], "import sys\n", env)
    (result,) = document["results"]
    assert result["status"] == "skipped", result
    assert (
        "not available in this process: 2 JAX CPU devices needed, 1 present" in (result["message"])
    )
    assert f"XLA_FLAGS={HOST_DEVICE_FLAG}=2" in result["message"]


def test_kfac_jax_across_devices_gives_every_device_its_one_device_type2_kfac():
    results = run_items("kfac-jax", DISTRIBUTED_PASSING)
    for item, result in results.items():
        assert result["status"] == "passed", (item, result["message"], result["diagnosis"])
        assert result["observed"] <= result["tolerance"] == 1e-10


def test_kfac_jax_empirical_fisher_on_w_devices_is_w_times_one_devices_an_expected_failure():
    """Finding J3: every device divides by its own batch size."""
    item = "distributed/kfac-empirical[mlp[tanh-ce-batch]]"
    failed = run_items("kfac-jax", [item])[item]
    assert failed["status"] == "failed", failed
    assert "device 0 of W=2 holding 8 of the 16 data" in failed["message"]
    assert "off by a constant factor x 2 = W (W = 2 devices)" in failed["diagnosis"]
    expected = run_items("kfac-jax", [item], read_expected_failures(XFAIL))[item]
    assert expected["status"] == "xfailed" and "J3" in expected["message"], expected


@pytest.mark.parametrize("mutant", DISTRIBUTED_MUTANTS, ids=lambda mutant: mutant.__name__)
def test_a_wrong_combination_of_the_devices_factors_fails_the_distributed_items(mutant):
    item = DISTRIBUTED_PASSING[0]
    result = run_items(f"jax_mutants:{mutant.__name__}", [item])[item]
    assert result["status"] == "failed", result  # an error would be no kill
    assert "of W=2" in result["message"]
    assert mutant.diagnosis in (result["diagnosis"] or ""), result


def test_kfac_jax_passes_where_kfac_is_exact():
    results = run_items("kfac-jax", PASSING)
    assert sorted(results) == sorted(PASSING)
    for item, result in results.items():
        assert result["status"] == "passed", (item, result["message"], result["diagnosis"])
        assert result["observed"] <= result["tolerance"] == 1e-10


def test_kfac_jax_reduce_on_shared_axes_is_refused_as_the_matrix_counts_refusals():
    item = "exactness/type-2-reduce[conv-reduce[stride2-pad1-mean-pool]]"
    result = run_items("kfac-jax", [item])[item]
    assert result["status"] == "skipped"
    assert "refused by the candidate" in result["message"]  # docs/generate_matrix.py's marker


def zoo_killers(mutant: str) -> tuple[str, ...]:
    """The ``killers`` of a PyTorch zoo mutant, read from the source (importing it needs torch)."""
    for path in sorted(ZOO.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name == mutant:
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and statement.targets[0].id == "killers":
                        return ast.literal_eval(statement.value)
    raise LookupError(f"no mutant {mutant} with killers in {ZOO}")


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.__name__)
def test_a_wrong_jax_candidate_fails_the_killers_of_its_pytorch_counterpart(mutant):
    counterpart_killers = zoo_killers(mutant.counterpart)
    killers = [  # a killer names an item or a whole check, as in tests/test_zoo.py
        item.id
        for item in runner.plan()
        if item.id in counterpart_killers or item.check_id in counterpart_killers
    ]
    assert killers, f"no killer of {mutant.counterpart} is an item of the JAX runner"
    results = run_items(f"jax_mutants:{mutant.__name__}", killers)
    assert not [r for r in results.values() if r["status"] == "error"], "an error is no kill"
    # as in tests/test_zoo.py: a named item must fail; of a whole check, some item (a mutant
    # can be right by coincidence on a case, e.g. a missing R where R_mean = R_sum)
    for killer in counterpart_killers:
        if killer in results:
            assert results[killer]["status"] == "failed", results[killer]
            continue
        of_check = [r for r in results.values() if r["check_id"] == killer]
        assert not of_check or any(r["status"] == "failed" for r in of_check), of_check
    for result in results.values():
        if result["status"] == "failed":
            assert mutant.diagnosis in result["diagnosis"], result
    right = run_items("kfac-jax", killers)
    assert [result["status"] for result in right.values()] == ["passed"] * len(killers)


def test_patches_are_reordered_from_kfac_jax_to_pytorch_order():
    """A HWIO kernel's rows ``(kh, kw, c_in)``, reordered, are PyTorch's ``(c_in, kh, kw)``."""
    c_out, c_in, kernel_h, kernel_w = 2, 3, 4, 5
    weight = np.arange(c_out * c_in * kernel_h * kernel_w).reshape(c_out, c_in, kernel_h, kernel_w)
    rows = weight.transpose(2, 3, 1, 0).reshape(-1, c_out)
    order = _torch_patch_order(kernel_h, kernel_w, c_in)
    np.testing.assert_array_equal(rows[order], weight.reshape(c_out, -1).T)


def test_the_kinds_read_without_jax_are_those_the_network_builds():
    """``kinds.KINDS`` (importable without JAX, so that refusals need no JAX) against the
    builder itself: of the layer kinds in the stored cases, the builder knows exactly those
    listed, and every stored case that ``kinds.unsupported`` accepts builds and runs."""
    specs = {
        spec[0]: spec
        for case_id in fixtures.case_ids()
        for spec in fixtures.load(case_id).architecture
    }
    assert kinds.KINDS <= set(specs), "a listed kind in no stored case is not tried here"
    built = set()
    for kind, spec in specs.items():
        try:
            network.layer_function(spec, "0")
        except ValueError as error:
            assert repr(kind) in str(error)
        else:
            built.add(kind)
    assert built == kinds.KINDS
    for case_id in fixtures.case_ids():
        case = fixtures.load(case_id)
        if kinds.unsupported(case.architecture) is not None:
            continue
        X, y = case.batches[0]
        output = network.build(case.architecture)(network.jax_params(case), jnp.asarray(X))
        assert output.shape[0] == len(X) and bool(jnp.isfinite(output).all()), case_id
        if case.loss == "mse":
            assert output.shape == y.shape, case_id
