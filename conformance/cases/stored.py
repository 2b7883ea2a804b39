"""The canonical cases stored as data: parameters, batches and the oracle's exact blocks.

One safetensors file per case (``<file name>.safetensors``) and one ``cases.json`` index,
in the package data folder ``kfac_conformance.fixture_data`` (``fixtures/`` in the source
tree). Keys in a case file:

- ``param.<name>``: the float64 parameters, ``<name>`` as in ``model.named_parameters()``;
- ``X.<i>``, ``y.<i>``: batch ``i`` (``y`` holds int64 class indices for cross-entropy, ``X``
  int64 indices for a network that starts with an embedding);
- ``ggn.<layer>`` and ``empirical.<layer>``: the exact blocks of every parameter layer over
  all batches, over the layer's parameters in ``named_parameters`` order, flattened row-major
  (see :mod:`kfac_conformance.oracle.blocks` for the conventions);
- agreement cases only: the reference's KFAC and EKFAC answers
  (:mod:`kfac_conformance.cases.stored_reference`).

The index entry of every case also holds the counts the conventions and diagnoses read
(``counts``, ``shared_positions``), and an agreement case's ``reference`` says which answers
its file holds.

Regenerate with ``python -m kfac_conformance.cases.stored`` after changing a case.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.resources
import json
import os
import re
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kfac_conformance.cases.architectures import build_model, parameter_layers
from kfac_conformance.cases.canonical import AGREEMENT_CASES, CANONICAL_CASES, LOSSES, Case
from kfac_conformance.cases.stored_reference import (
    counts_record,
    reference_record,
    reference_tensors,
    stored_flavours,
)
from kfac_conformance.contract.problem import Problem
from kfac_conformance.oracle.blocks import exact_blocks

PACKAGE = "kfac_conformance.fixture_data"
INDEX_FILE = "cases.json"
FORMAT_VERSION = 1
STORED_CURVATURES = ("ggn", "empirical")
REGENERATE_COMMAND = "python -m kfac_conformance.cases.stored"


def file_name(case_id: str) -> str:
    """A file-system-safe name for a case id, e.g. ``one-datum-mlp_tanh-mse-mean.safetensors``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", case_id).strip("_") + ".safetensors"


def case_record(case: Case, kind: str, layers: list[str], derived: dict | None = None) -> dict:
    """The index entry of one case: everything needed to rebuild and describe it (the optional
    ``batch_sizes`` and ``identical_inputs`` only where a case sets them), then ``derived``:
    what :func:`case_tensors` found (counts, and what reference answers are stored)."""
    optional = {
        "batch_sizes": list(case.batch_sizes),
        "identical_inputs": case.identical_inputs,
    }
    return {
        "file": file_name(case.id),
        "kind": kind,
        "architecture": json.loads(json.dumps(case.architecture)),
        "input_shape": list(case.input_shape),
        "loss": case.loss,
        "reduction": case.reduction,
        "num_batches": case.num_batches,
        **{key: value for key, value in optional.items() if value},
        "seed": case.seed,
        "layers": layers,
        "exact": {key: list(value) for key, value in case.exact.items()},
        "statement": case.statement,
        "source": case.source,
        **(derived or {}),
        "torch_version": torch.__version__,
    }


def case_tensors(case: Case, kind: str) -> tuple[dict[str, Tensor], list[str], dict]:
    """All tensors of one case file, the parameter layers, and the index fields derived from
    the problem (its counts; for an agreement case, which reference answers are stored)."""
    problem = case.make_problem(torch.float64)
    tensors: dict[str, Tensor] = {}
    for name, param in problem.model.named_parameters():
        tensors[f"param.{name}"] = param.detach().clone().contiguous()
    for index, (X, y) in enumerate(problem.batches):
        tensors[f"X.{index}"] = X.clone().contiguous()
        tensors[f"y.{index}"] = y.clone().contiguous()
    for curvature in STORED_CURVATURES:
        blocks = exact_blocks(
            problem.model, problem.loss_func, problem.batches, problem.layers, curvature
        )
        for layer, block in blocks.items():
            tensors[f"{curvature}.{layer}"] = block.clone().contiguous()
    derived = counts_record(problem)
    if kind == "agreement":
        flavours = stored_flavours(derived["shared_positions"])
        tensors.update(reference_tensors(problem, flavours))
        derived["reference"] = reference_record(flavours)
    return tensors, list(problem.layers), derived


def fixture_root() -> Traversable:
    """The folder of the package data, read through ``importlib.resources``."""
    try:
        return importlib.resources.files(PACKAGE)
    except NotADirectoryError:
        # setuptools' editable installs put a placeholder that is not a directory on the
        # __path__ of a namespace package, which importlib.resources (Python < 3.12) rejects.
        for entry in importlib.import_module(PACKAGE).__path__:
            if Path(entry).is_dir():
                return Path(entry)
        raise


def regenerate(directory: str | Path | None = None) -> list[Path]:
    """Write every case file and the index into ``directory`` (default: the package data).

    Case files that an earlier index listed but that are no longer generated are removed.
    Returns the paths written.
    """
    target = Path(str(fixture_root())) if directory is None else Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    cases = [(case, "canonical") for case in CANONICAL_CASES]
    cases += [(case, "agreement") for case in AGREEMENT_CASES]
    names = [file_name(case.id) for case, _ in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"two cases map to the same fixture file name: {sorted(names)}")

    old_index = target / INDEX_FILE
    old_files = set()
    if old_index.is_file():
        old_files = {entry["file"] for entry in json.loads(old_index.read_text())["cases"].values()}

    written, records = [], {}
    for case, kind in cases:
        tensors, layers, derived = case_tensors(case, kind)
        path = target / file_name(case.id)
        # one metadata entry only: safetensors writes several in random order, and the
        # files should be byte-for-byte reproducible (versions are in the index)
        metadata = {"case_id": case.id}
        save_file(tensors, str(path), metadata=metadata)
        records[case.id] = case_record(case, kind, layers, derived)
        written.append(path)

    index = {
        "format_version": FORMAT_VERSION,
        "regenerate": REGENERATE_COMMAND,
        "conventions": {
            "parameters": "flattened row-major in named_parameters order; weight block = kron(B, A)",
            "loss": "L = R * sum_n c_n split as the KFAC tutorial (arXiv 2507.05127, eq. 1): "
            "MSE c = 1/2 ||f - y||^2, R = 2 ('sum') or 2/(number of averaged elements) ('mean'); "
            "CE and BCE c = negative log-likelihood, R = 1 or 1/(number of averaged elements)",
            "ggn": "R * sum_n J_n^T (d^2 c_n / df_n^2) J_n over all batches",
            "empirical": "R * sum_n grad c_n grad c_n^T over all batches",
            "dtype": "float64 (labels of cross-entropy and the inputs of an embedding: int64)",
            "reference": "agreement cases: kfac_ref's KFAC (A, B) and EKFAC (QA, QB, S, S_bias) "
            "as <approximation>.<fisher type>.<flavour>.<bias>.<layer>.<factor>",
        },
        "cases": records,
    }
    index_path = target / INDEX_FILE
    # atomically: a run reading the index meanwhile sees the old one or the new one
    temporary = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
    temporary.write_text(_compact_json(index) + "\n")
    os.replace(temporary, index_path)
    written.append(index_path)
    for stale in sorted(old_files - set(names)):
        (target / stale).unlink(missing_ok=True)
    _read_index.cache_clear()
    _read_tensors.cache_clear()
    return written


def _is_short(value: list) -> bool:
    """A list of scalars, or a short list of lists of scalars (a pooling layer's spec)."""
    nested = [v for v in value if isinstance(v, (list, dict))]
    if not nested:
        return True
    flat = all(
        isinstance(v, list) and _is_short(v) and not any(isinstance(w, list) for w in v)
        for v in nested
    )
    return flat and len(json.dumps(value)) <= 40


def _compact_json(value, indent: str = "") -> str:
    """Indented JSON with every list of scalars on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and not _is_short(value):
        items = [inner + _compact_json(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value)


def load_index() -> dict:
    """The parsed ``cases.json`` (a copy: the caller may change it)."""
    return copy.deepcopy(_read_index())


# A run loads the same case for every check, several times each: parsing the index and the
# case files once per process instead of once per load saves about a tenth of a profile.
@functools.cache
def _read_index() -> dict:
    index = fixture_root() / INDEX_FILE
    if not index.is_file():
        raise FileNotFoundError(
            f"no fixture index {INDEX_FILE} in {PACKAGE}; run `{REGENERATE_COMMAND}`"
        )
    return json.loads(index.read_text())


def available_case_ids() -> list[str]:
    """Ids of the stored cases, in index order."""
    return list(_read_index()["cases"])


def _record(case_id: str) -> dict:
    cases = _read_index()["cases"]
    if case_id not in cases:
        raise KeyError(
            f"no stored fixture for case {case_id!r}; stored: {sorted(cases)}. "
            f"Run `{REGENERATE_COMMAND}` after adding a case"
        )
    return cases[case_id]


# shared by every load in the process: callers copy what they hand out
@functools.cache
def _read_tensors(case_id: str) -> dict[str, Tensor]:
    resource = fixture_root() / _record(case_id)["file"]
    with importlib.resources.as_file(resource) as path:
        return load_file(str(path))


def load_problem(case_id: str) -> Problem:
    """The stored case as a :class:`Problem` in float64, with a freshly built model."""
    record = _record(case_id)
    tensors = _read_tensors(case_id)
    # the generator only fills the parameters that the stored ones then replace
    model = build_model(record["architecture"], torch.float64, torch.Generator().manual_seed(0))
    state = {
        key.removeprefix("param."): t for key, t in tensors.items() if key.startswith("param.")
    }
    model.load_state_dict(state, strict=True)
    batches = [
        (tensors[f"X.{i}"].clone(), tensors[f"y.{i}"].clone()) for i in range(record["num_batches"])
    ]
    loss_func = LOSSES[record["loss"]](reduction=record["reduction"])
    return Problem(model, loss_func, batches, parameter_layers(model), case_id)


def load_exact_blocks(case_id: str, curvature: str) -> dict[str, Tensor]:
    """The stored exact blocks (``"ggn"`` or ``"empirical"``) of every parameter layer."""
    if curvature not in STORED_CURVATURES:
        raise ValueError(f"curvature must be one of {STORED_CURVATURES}, got {curvature!r}")
    tensors = _read_tensors(case_id)
    return {layer: tensors[f"{curvature}.{layer}"].clone() for layer in _record(case_id)["layers"]}


def main() -> None:
    for path in regenerate():
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
