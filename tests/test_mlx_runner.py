"""The MLX runner: the network builder and mlx-kfac against the stored fixtures, with no torch
and no JAX in the process.

Skips without the optional extra ``mlx`` (run it with ``nox -s tests_mlx``, which installs
neither torch nor JAX).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip(
    "mlx.core", reason="the MLX runner needs the extra 'mlx' (nox -s tests_mlx)"
)
pytest.importorskip("mlx_kfac", reason="the MLX runner needs mlx-kfac (nox -s tests_mlx)")

import mlx.nn as nn  # noqa: E402
from import_blocking import blocking_prelude  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from kfac_conformance.contract import conventions  # noqa: E402
from kfac_conformance.mlx import network  # noqa: E402
from kfac_conformance.mlx.mlx_kfac_candidate import (  # noqa: E402
    MlxKfacCandidate,
    loss,
    patch_order,
)
from kfac_conformance.neutral import fixtures  # noqa: E402
from kfac_conformance.neutral import runner as neutral_runner  # noqa: E402
from kfac_conformance.neutral.comparison import relative_error, tolerance  # noqa: E402
from kfac_conformance.neutral.factors import Factors  # noqa: E402
from kfac_conformance.neutral.plan import plan  # noqa: E402

FLOAT32_TOLERANCE = tolerance("float32")
# one per loss, several batches of uneven sizes, weight sharing, 1-D and 2-D convolutions with
# several taps and channels, an embedding (agreement with the stored reference answers)
PASSING = [
    "exactness/empirical-expand[one-datum-mlp[tanh-ce-mean]]",
    "exactness/empirical-expand[one-datum-mlp[sigmoid-bce-sum]]",
    "exactness/empirical-reduce[one-datum-mlp[relu-mse-mean]]",
    "exactness/empirical-expand[identical-inputs-mlp[mse-mean-uneven-batches]]",
    "invariance/batch-splitting[deep-linear[mse-mean-uneven-batches]]",
    "agreement/empirical[cnn[relu-ce]]",
    "agreement/empirical[cnn[dilated-tanh-ce]]",
    "agreement/empirical[sequence[tanh-ce-per-position]]",
    "agreement/empirical[cnn1d[tanh-ce]]",
    "agreement/empirical[embedding[tanh-bce-mean-pool]]",
    "invariance/batch-splitting[embedding-expand[deep-linear-per-position]]",
]
BLOCK_TORCH_AND_JAX = blocking_prelude("torch", "jax", "kfac_ref")


def run_items(candidate: MlxKfacCandidate, item_ids: list[str]) -> dict[str, dict]:
    items = [item for item in plan() if item.id in item_ids]
    assert len(items) == len(item_ids), f"not all of {item_ids} are planned"
    document = neutral_runner.run("mlx", candidate, items, "python -m kfac_conformance.mlx")
    return {f"{r['check_id']}[{r['case_id']}]": r for r in document["results"]}


def test_the_runner_works_with_torch_and_jax_unimportable(tmp_path: Path):
    report = tmp_path / "mlx-kfac.json"
    code = BLOCK_TORCH_AND_JAX + textwrap.dedent(f"""
        import runpy
        sys.argv = ["kfac_conformance.mlx", "--candidate", "mlx-kfac", "--item", {PASSING[0]!r},
                    "--report-json", {str(report)!r}]
        try:
            runpy.run_module("kfac_conformance.mlx", run_name="__main__")
        except SystemExit:
            print("imported:", sorted({{"torch", "jax"}} & set(sys.modules)))
            raise
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported: []" in done.stdout
    document = json.loads(report.read_text())
    assert document["schema_version"] == 1 and document["complete"]
    assert document["torch_version"] == "not used" and document["mlx_version"] == mx.__version__
    assert document["candidate"]["dtype"] == "float32"
    assert [r["status"] for r in document["results"]] == ["passed"]


def test_mlx_kfac_passes_with_the_float32_tolerance():
    results = run_items(MlxKfacCandidate(), PASSING)
    assert sorted(results) == sorted(PASSING)
    for item, result in results.items():
        assert result["status"] == "passed", (item, result["message"], result["diagnosis"])
        assert result["observed"] <= result["tolerance"] == FLOAT32_TOLERANCE


def test_what_mlx_kfac_does_not_compute_is_refused():
    items = [
        "exactness/type-2-expand[one-datum-mlp[tanh-ce-mean]]",
        "mc/unbiased[one-datum-mlp[tanh-ce-sum]]",
        "agreement/forward-only[mlp[tanh-ce-batch]]",
        "exactness/type-2-reduce[conv-reduce[stride2-pad1-mean-pool]]",
        "agreement/empirical[cnn3d[sigmoid-mse-feature-map]]",
    ]
    results = run_items(MlxKfacCandidate(), items)
    for item in items:
        assert results[item]["status"] == "skipped", results[item]
        assert "refused by the candidate" in results[item]["message"]  # the matrix's marker
    case = fixtures.load("conv-reduce[stride2-pad1-mean-pool]")
    assert "no KFAC-reduce" in MlxKfacCandidate().refusal(case, "empirical", "reduce")
    # the builder builds Conv3d; mlx-kfac does not instrument it, and says so
    case = fixtures.load("cnn3d[sigmoid-mse-feature-map]")
    assert network.unsupported(case.architecture) is None
    assert "instruments no ['conv3d']" in MlxKfacCandidate().refusal(case, "empirical", "expand")


def test_a_layer_the_builder_does_not_know_is_refused_with_its_spec():
    case = fixtures.load("one-datum-mlp[tanh-ce-mean]")
    record = {**case.record, "architecture": [["conv_transpose1d", 4, 3, 1, 1, 0, 1, True]]}
    unknown = replace(case, record=record)
    reason = MlxKfacCandidate().refusal(unknown, "empirical", "expand")
    assert reason is not None and "conv_transpose1d" in reason
    with pytest.raises(ValueError, match="conv_transpose1d"):
        network.build(unknown)
    grouped = ["conv2d", 4, 4, 1, 1, 0, 1, True, 2]  # a spec with more entries than known
    record = {**case.record, "architecture": [grouped]}
    reason = MlxKfacCandidate().refusal(replace(case, record=record), "empirical", "expand")
    assert reason is not None and str(grouped) in reason
    record = {**case.record, "architecture": [["linear", 4, 5, True], ["embedding", 5, 3]]}
    with pytest.raises(ValueError, match="embedding only as the first layer"):
        network.build(replace(case, record=record))


class DeclaresTheTutorialsScale(MlxKfacCandidate):
    """mlx-kfac's blocks under a wrong declaration: the scale is then no known convention."""

    conventions = conventions.TUTORIAL


class KeepsMlxPatchOrder(MlxKfacCandidate):
    """A convolution's factor A left in MLX's ``(k..., c_in)`` patch order."""

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour, mc_samples, seed)
        for layer, factors in result.items():
            spec = case.architecture[int(layer)]
            if spec[0] in network.CONVOLUTIONS:
                order = np.argsort(patch_order(spec[1], spec[3], network.SPATIAL_AXES[spec[0]]))
                if factors.bias == "joint":
                    order = np.append(order, factors.A.shape[0] - 1)
                result[layer] = Factors(factors.A[np.ix_(order, order)], factors.B, factors.bias)
        return result


class EmbeddingAsLinear(MlxKfacCandidate):
    """An embedding's factors in a linear layer's order: ``kron(G, counts)``, as if its weight
    were ``dim x num_embeddings``."""

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour, mc_samples, seed)
        for layer, factors in result.items():
            if case.architecture[int(layer)][0] == "embedding":
                result[layer] = Factors(factors.B, factors.A)
        return result


def test_a_wrong_declaration_fails_with_a_constant_factor():
    item = "exactness/empirical-expand[one-datum-mlp[tanh-mse-mean]]"
    result = run_items(DeclaresTheTutorialsScale(), [item])[item]
    assert result["status"] == "failed", result
    assert "off by a constant factor" in result["diagnosis"], result


@pytest.mark.parametrize(
    ("mutant", "item"),
    [
        (KeepsMlxPatchOrder, "agreement/empirical[cnn[relu-ce]]"),
        (KeepsMlxPatchOrder, "agreement/empirical[cnn1d[tanh-ce]]"),
        (EmbeddingAsLinear, "agreement/empirical[embedding[tanh-bce-mean-pool]]"),
    ],
)
def test_the_layouts_matter(mutant: type[MlxKfacCandidate], item: str):
    """The patch order of multi-channel kernels (1-D and 2-D) and the embedding's factor order
    are seen: left in MLX's layout, the blocks are far off."""
    result = run_items(mutant(), [item])[item]
    assert result["status"] == "failed", result
    assert result["observed"] > 100 * FLOAT32_TOLERANCE


@pytest.mark.parametrize("spatial_axes", [1, 2, 3])
def test_patch_order_takes_mlx_kernel_columns_to_pytorch_order(spatial_axes: int):
    """An MLX kernel's columns ``(k..., c_in)``, reordered, are PyTorch's ``(c_in, k...)``."""
    c_out, c_in, kernel = 2, 3, 4
    weight = np.arange(c_out * c_in * kernel**spatial_axes).reshape(
        (c_out, c_in) + (kernel,) * spatial_axes
    )
    columns = network.kernel_to_mlx(weight).reshape(c_out, -1)
    order = patch_order(c_in, kernel, spatial_axes)
    np.testing.assert_array_equal(columns[:, order], weight.reshape(c_out, -1))


def test_float_arrays_are_converted_with_the_dtype_named():
    """MLX turns a float64 ndarray into float32 when no dtype is given; the builder names its
    dtype, and leaves integer labels integers."""
    assert mx.array(np.ones(2)).dtype == mx.float32  # the pitfall: no error, no float64
    assert network.as_mlx(np.ones(2)).dtype == network.DTYPE == mx.float32
    assert mx.issubdtype(network.as_mlx(np.arange(3)).dtype, mx.integer)


def per_datum_gradients(case: fixtures.StoredCase, model: network.Network) -> dict[str, np.ndarray]:
    """Per layer, the rows ``∇c'_n`` over ``[weight.flatten(), bias]`` in PyTorch's layout."""
    gradient = nn.value_and_grad(model, lambda X, y: loss(case.loss, model(X), y))
    paths = network.module_paths(case.architecture)
    rows: dict[str, list[np.ndarray]] = {layer: [] for layer in case.layers}
    for X, y in case.batches:
        for n in range(X.shape[0]):
            _, grads = gradient(network.as_mlx(X[n : n + 1]), network.as_mlx(y[n : n + 1]))
            flat = dict(tree_flatten(grads))
            for layer in case.layers:
                weight = np.array(flat[f"{paths[layer]}.weight"], dtype=np.float64)
                if weight.ndim > 2:  # a kernel, (out, k..., in) back to PyTorch's (out, in, k...)
                    weight = np.moveaxis(weight, -1, 1)
                bias = flat.get(f"{paths[layer]}.bias")
                parts = [weight.ravel()] + (
                    [np.array(bias, np.float64)] if bias is not None else []
                )
                rows[layer].append(np.concatenate(parts))
    return {layer: np.stack(vectors) for layer, vectors in rows.items()}


@pytest.mark.parametrize("case_id", fixtures.case_ids())
def test_the_mlx_network_gives_the_stored_empirical_fisher(case_id: str):
    """The builder (layouts, channels first, embeddings, reductions, flatten, movedim) and the
    loss, without mlx-kfac: MLX's per-datum gradients give the stored exact empirical Fisher,
    up to the convention mlx-kfac is declared with, to float32 precision (every stored case:
    none is left unbuilt)."""
    case = fixtures.load(case_id)
    assert network.unsupported(case.architecture) is None
    gradients = per_datum_gradients(case, network.build(case))
    scale = conventions.scale(MlxKfacCandidate.conventions, "empirical", case.quantities())
    for layer, stored in case.exact("empirical").items():
        rows = gradients[layer]
        empirical = rows.T @ rows / case.counts["N"]
        assert relative_error(empirical / scale, stored) <= FLOAT32_TOLERANCE, layer
