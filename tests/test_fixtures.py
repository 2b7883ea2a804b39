"""The stored fixtures: in step with cases.py, loadable, and reproduced by the live oracle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kfac_conformance.cases import stored as fixtures
from kfac_conformance.cases.architectures import parameter_layers
from kfac_conformance.cases.canonical import AGREEMENT_CASES, ALL_CASES, CANONICAL_CASES
from kfac_conformance.oracle.blocks import exact_blocks

TOL = 1e-10
STALE = f"the stored fixtures are out of date: regenerate them with `{fixtures.REGENERATE_COMMAND}`"
STORED_IDS = fixtures.available_case_ids()


def relative_error(approx, exact) -> float:
    difference, scale = (approx - exact).norm().item(), exact.norm().item()
    if scale == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return difference / scale


def test_index_holds_exactly_the_cases():
    expected = [case.id for case in [*CANONICAL_CASES, *AGREEMENT_CASES]]
    assert STORED_IDS == expected, f"{STALE} (stored ids differ from cases.py)"
    index = fixtures.load_index()
    assert index["format_version"] == fixtures.FORMAT_VERSION, STALE
    kinds = {case_id: record["kind"] for case_id, record in index["cases"].items()}
    assert {k for k, v in kinds.items() if v == "canonical"} == {c.id for c in CANONICAL_CASES}


@pytest.mark.parametrize("case_id", list(ALL_CASES))
def test_index_entry_matches_the_case(case_id: str):
    assert case_id in STORED_IDS, f"{STALE} (case {case_id!r} is not stored)"
    case = ALL_CASES[case_id]
    record = fixtures.load_index()["cases"][case_id]
    # compare through JSON so that tuples and lists count as equal
    described = json.loads(json.dumps(fixtures.case_record(case, record["kind"], record["layers"])))
    for field in (
        "file",
        "architecture",
        "input_shape",
        "loss",
        "reduction",
        "num_batches",
        "batch_sizes",
        "identical_inputs",
        "seed",
        "exact",
        "statement",
        "source",
    ):
        assert record.get(field) == described.get(field), f"{STALE} ({case_id}: {field} differs)"
    assert record["layers"] == case.make_problem().layers, f"{STALE} ({case_id}: layers differ)"
    assert record["torch_version"], "the index must say which torch generated the fixtures"


@pytest.mark.parametrize("case_id", STORED_IDS)
def test_stored_file_has_the_documented_keys(case_id: str):
    record = fixtures.load_index()["cases"][case_id]
    resource = fixtures.fixture_root() / record["file"]
    with safe_open(str(resource), framework="pt") as stored:
        keys = set(stored.keys())
        metadata = stored.metadata()
    assert metadata["case_id"] == case_id
    problem = ALL_CASES[case_id].make_problem()
    expected = {f"param.{name}" for name, _ in problem.model.named_parameters()}
    expected |= {f"{kind}.{i}" for kind in ("X", "y") for i in range(record["num_batches"])}
    expected |= {f"{c}.{layer}" for c in ("ggn", "empirical") for layer in record["layers"]}
    if record["kind"] == "agreement":
        expected |= reference_keys(record, problem.model)
    else:
        assert "reference" not in record, "only agreement cases store the reference's answers"
    assert keys == expected, STALE


def reference_keys(record: dict, model: torch.nn.Module) -> set[str]:
    """The documented keys of the stored reference answers (fixtures/README.md): a grouped
    convolution's per group."""
    parameters = dict(model.named_parameters())
    stored, keys = record["reference"], set()
    for approximation, names in (("kfac", ("A", "B")), ("ekfac", ("QA", "QB", "S"))):
        for fisher_type in stored[approximation]:
            for flavour in stored["flavours"]:
                for bias in stored["bias"]:
                    for layer in record["layers"]:
                        prefix = f"{approximation}.{fisher_type}.{flavour}.{bias}.{layer}"
                        groups = getattr(model.get_submodule(layer), "groups", 1)
                        prefixes = [prefix] if groups == 1 else [
                            f"{prefix}.group{g}" for g in range(groups)
                        ]  # fmt: skip
                        for where in prefixes:
                            keys |= {f"{where}.{name}" for name in names}
                            separate = approximation == "ekfac" and bias == "separate"
                            if separate and f"{layer}.bias" in parameters:
                                keys.add(f"{where}.S_bias")
    return keys


@pytest.mark.parametrize("case_id", STORED_IDS)
def test_stored_data_is_what_the_case_generates(case_id: str):
    """Parameters and batches equal cases.py's (same generator); a case edit shows up here."""
    stored = fixtures.load_problem(case_id)
    live = ALL_CASES[case_id].make_problem(torch.float64)
    live_params = dict(live.model.named_parameters())
    for name, param in stored.model.named_parameters():
        assert param.dtype == torch.float64
        assert torch.allclose(param, live_params[name], rtol=1e-12, atol=0), f"{STALE} ({name})"
    assert len(stored.batches) == len(live.batches), STALE
    for (X, y), (X_live, y_live) in zip(stored.batches, live.batches, strict=True):
        assert X.dtype == X_live.dtype and y.dtype == y_live.dtype
        if X.is_floating_point():
            assert X.dtype == torch.float64
            assert torch.allclose(X, X_live, rtol=1e-12, atol=0), f"{STALE} (inputs)"
        else:  # an Embedding's indices
            assert torch.equal(X, X_live), f"{STALE} (inputs)"
        if y.is_floating_point():
            assert torch.allclose(y, y_live, rtol=1e-12, atol=0), f"{STALE} (targets)"
        else:
            assert torch.equal(y, y_live), f"{STALE} (labels)"


@pytest.mark.parametrize("curvature", fixtures.STORED_CURVATURES)
@pytest.mark.parametrize("case_id", STORED_IDS)
def test_live_oracle_reproduces_stored_blocks(case_id: str, curvature: str):
    problem = fixtures.load_problem(case_id)
    stored = fixtures.load_exact_blocks(case_id, curvature)
    assert list(stored) == problem.layers
    live = exact_blocks(
        problem.model, problem.loss_func, problem.batches, problem.layers, curvature
    )
    for layer in problem.layers:
        assert stored[layer].dtype == torch.float64
        error = relative_error(live[layer], stored[layer])
        assert error < TOL, f"{case_id} {curvature} layer {layer}: {error:.3e}. {STALE}"


def test_load_problem_builds_a_fresh_model_each_call():
    case_id = "mlp[tanh-ce-batch]"
    first, second = fixtures.load_problem(case_id), fixtures.load_problem(case_id)
    assert first.model is not second.model
    assert first.case_id == case_id and first.layers == parameter_layers(first.model)
    with torch.no_grad():
        for param in first.model.parameters():
            param.add_(1.0)
    for p1, p2 in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert not torch.equal(p1, p2), "two loaded models share parameters"
    third = fixtures.load_problem(case_id)
    for p2, p3 in zip(second.model.parameters(), third.model.parameters(), strict=True):
        assert torch.equal(p2, p3), "a load saw another load's modification"
    first.batches[0][0].add_(1.0)
    assert not torch.equal(first.batches[0][0], third.batches[0][0]), "loads share batches"
    assert type(first.loss_func) is type(ALL_CASES[case_id].make_problem().loss_func)
    assert first.loss_func.reduction == ALL_CASES[case_id].reduction


def test_unknown_case_and_curvature_are_rejected():
    with pytest.raises(KeyError, match="no stored fixture for case 'nope'"):
        fixtures.load_problem("nope")
    with pytest.raises(ValueError, match="curvature must be one of"):
        fixtures.load_exact_blocks(STORED_IDS[0], "mc")


def test_regenerate_writes_loadable_files(tmp_path):
    written = fixtures.regenerate(tmp_path)
    names = sorted(path.name for path in written)
    expected = sorted([fixtures.INDEX_FILE] + [fixtures.file_name(c) for c in ALL_CASES])
    assert names == expected
    index = json.loads((tmp_path / fixtures.INDEX_FILE).read_text())
    assert list(index["cases"]) == STORED_IDS
    # the freshly written blocks agree with the stored ones
    case_id = "conv-reduce[stride2-pad1-mean-pool]"
    fresh = load_file(str(tmp_path / fixtures.file_name(case_id)))
    for layer, block in fixtures.load_exact_blocks(case_id, "ggn").items():
        assert relative_error(fresh[f"ggn.{layer}"], block) < TOL


def test_loaded_blocks_and_index_are_copies():
    case_id = "mlp[tanh-ce-batch]"
    layer, block = next(iter(fixtures.load_exact_blocks(case_id, "ggn").items()))
    block.add_(1.0)
    fixtures.load_index()["cases"].clear()
    again = fixtures.load_exact_blocks(case_id, "ggn")[layer]
    assert not torch.equal(block, again), "two loads share exact blocks"
    assert case_id in fixtures.load_index()["cases"], "a caller changed the cached index"
