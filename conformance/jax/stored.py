"""The stored cases read without torch: ``cases.json`` and the safetensors files, as numpy.

See ``fixtures/README.md`` for the layout. Parameters keep the PyTorch layout they are stored
in (``param.<layer>.weight`` is ``out x in`` or ``out x in x kh x kw``); :mod:`.network`
converts them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

PACKAGE = "kfac_conformance.fixture_data"
INDEX_FILE = "cases.json"
STORED_CURVATURES = ("ggn", "empirical")


# the layer kinds of the architecture language that :mod:`.network` builds in JAX
JAX_KINDS = frozenset(
    {"linear", "conv2d", "tanh", "sigmoid", "relu", "sum", "mean", "flatten", "movedim"}
)


@dataclass(frozen=True)
class StoredCase:
    """One stored case: its index record and its tensors (read-only numpy arrays)."""

    id: str
    record: dict
    tensors: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def architecture(self) -> list[list]:
        return self.record["architecture"]

    @property
    def kinds_without_jax_network(self) -> list[str]:
        """The case's layer kinds that :mod:`.network` does not build (Conv1d, Conv3d,
        Embedding): its items are skipped with them named."""
        return sorted({spec[0] for spec in self.architecture} - JAX_KINDS)

    @property
    def loss(self) -> str:
        return self.record["loss"]

    @property
    def reduction(self) -> str:
        return self.record["reduction"]

    @property
    def layers(self) -> list[str]:
        return list(self.record["layers"])

    def exact_layers(self, fisher_type: str, flavour: str) -> list[str]:
        """Layers on which KFAC of this kind equals the stored block (none: not claimed)."""
        return list(self.record["exact"].get(f"{fisher_type}/{flavour}", []))

    def parameter(self, layer: str, name: str) -> np.ndarray | None:
        return self.tensors.get(f"param.{layer}.{name}")

    @property
    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (self.tensors[f"X.{i}"], self.tensors[f"y.{i}"])
            for i in range(self.record["num_batches"])
        ]

    @property
    def num_data(self) -> int:
        return sum(X.shape[0] for X, _ in self.batches)

    def exact(self, curvature: str) -> dict[str, np.ndarray]:
        """The stored exact blocks (``"ggn"`` or ``"empirical"``) of every parameter layer."""
        if curvature not in STORED_CURVATURES:
            raise ValueError(f"curvature must be one of {STORED_CURVATURES}, got {curvature!r}")
        return {layer: self.tensors[f"{curvature}.{layer}"] for layer in self.layers}


def fixture_root() -> Path:
    """The package data folder (a plain folder: the fixtures ship uncompressed)."""
    try:
        return Path(str(importlib.resources.files(PACKAGE)))
    except NotADirectoryError:
        # setuptools' editable installs put a placeholder that is not a directory on the
        # __path__ of a namespace package, which importlib.resources (Python < 3.12) rejects
        for entry in importlib.import_module(PACKAGE).__path__:
            if Path(entry).is_dir():
                return Path(entry)
        raise


@functools.cache
def index() -> dict:
    path = fixture_root() / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no fixture index {INDEX_FILE} in {PACKAGE} ({path})")
    return json.loads(path.read_text())


def case_ids() -> list[str]:
    return list(index()["cases"])


@functools.cache
def load(case_id: str) -> StoredCase:
    cases = index()["cases"]
    if case_id not in cases:
        raise KeyError(f"no stored fixture for case {case_id!r}; stored: {sorted(cases)}")
    record = cases[case_id]
    tensors = load_file(str(fixture_root() / record["file"]))
    for array in tensors.values():
        array.setflags(write=False)
    return StoredCase(case_id, record, tensors)
