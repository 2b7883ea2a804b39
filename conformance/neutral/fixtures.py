"""The stored cases read with numpy only: ``cases.json`` and the safetensors files.

See ``fixtures/README.md`` for the layout. Parameters keep the PyTorch layout they are stored
in (``param.<layer>.weight`` is ``out x in`` or ``out x in x kh x kw``); a framework's runner
converts them to its own. Besides the exact blocks, a case may store the reference's
(``kfac_ref``'s) KFAC and EKFAC answers (:meth:`StoredCase.reference_kfac`,
:meth:`StoredCase.reference_ekfac`) and the counts its conventions and diagnoses read
(:meth:`StoredCase.quantities`, :attr:`StoredCase.counts`).
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

from kfac_conformance.neutral.factors import EigenFactors, Factors, GroupedFactors

PACKAGE = "kfac_conformance.fixture_data"
INDEX_FILE = "cases.json"
STORED_CURVATURES = ("ggn", "empirical")
# the loss names of cases.json -> the PyTorch classes the conventions registry is keyed by
LOSS_CLASSES = {"mse": "MSELoss", "ce": "CrossEntropyLoss", "bce": "BCEWithLogitsLoss"}


def reference_key(approximation: str, fisher_type: str, flavour: str, bias: str, layer: str) -> str:
    """The prefix of a stored reference answer's tensors, e.g. ``kfac.type-2.expand.joint.0``
    (``.A`` and ``.B``; EKFAC: ``.QA``, ``.QB``, ``.S`` and, for a separate bias, ``.S_bias``)."""
    return f"{approximation}.{fisher_type}.{flavour}.{bias}.{layer}"


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

    @property
    def counts(self) -> dict[str, float]:
        """``R`` (the tutorial's reduction factor), ``N`` (data), ``T`` (loss terms per datum),
        ``K`` (batches), as the PyTorch suite counts them."""
        return {name: float(value) for name, value in self.record["counts"].items()}

    @property
    def shared_positions(self) -> dict[str, int]:
        """Per layer, the positions per datum that share its weights (1: none)."""
        return dict(self.record["shared_positions"])

    @property
    def weight_sharing(self) -> bool:
        """Whether some layer shares its weights, i.e. whether reduce differs from expand."""
        return any(positions > 1 for positions in self.shared_positions.values())

    def quantities(self) -> dict[str, object]:
        """What :func:`kfac_conformance.contract.conventions.scale` reads: ``N``, ``R`` and
        the loss's PyTorch class name."""
        counts = self.counts
        return {"N": counts["N"], "R": counts["R"], "loss": LOSS_CLASSES[self.loss]}

    def exact(self, curvature: str) -> dict[str, np.ndarray]:
        """The stored exact blocks (``"ggn"`` or ``"empirical"``) of every parameter layer."""
        if curvature not in STORED_CURVATURES:
            raise ValueError(f"curvature must be one of {STORED_CURVATURES}, got {curvature!r}")
        return {layer: self.tensors[f"{curvature}.{layer}"] for layer in self.layers}

    def reference_fisher_types(self, approximation: str = "kfac") -> list[str]:
        """The Fisher types whose reference answer (``"kfac"`` or ``"ekfac"``) is stored."""
        return list(self.record.get("reference", {}).get(approximation, []))

    def reference_kfac(self, fisher_type: str, flavour: str, bias: str) -> dict[str, Factors]:
        """``kfac_ref``'s KFAC of every layer for the request (a layer without a bias has
        bias mode ``"none"`` whatever ``bias`` asks)."""
        return {
            layer: self._per_group(
                lambda where, layer=layer: Factors(
                    *self._reference("kfac", fisher_type, flavour, bias, where, ("A", "B")),
                    bias=self._bias_mode(layer, bias),
                ),
                layer,
            )
            for layer in self.layers
        }

    def reference_ekfac(self, fisher_type: str, flavour: str, bias: str) -> dict[str, EigenFactors]:
        """``kfac_ref``'s EKFAC of every layer for the request."""
        result = {}
        for layer in self.layers:
            mode = self._bias_mode(layer, bias)
            names = ("QA", "QB", "S", "S_bias") if mode == "separate" else ("QA", "QB", "S")

            def read(where: str, mode=mode, names=names) -> EigenFactors:
                QA, QB, S, *S_bias = self._reference(
                    "ekfac", fisher_type, flavour, bias, where, names
                )
                return EigenFactors(QA, QB, S, bias=mode, S_bias=S_bias[0] if S_bias else None)

            result[layer] = self._per_group(read, layer)
        return result

    def _per_group(self, read, layer: str):
        """``read(layer)``, or for a grouped convolution (stored as ``<layer>.group<g>``) the
        :class:`GroupedFactors` of ``read`` of every group."""
        groups = self.layer_groups(layer)
        if groups == 1:
            return read(layer)
        return GroupedFactors(tuple(read(f"{layer}.group{g}") for g in range(groups)))

    def layer_groups(self, layer: str) -> int:
        """The layer's ``groups``: a convolution spec's ninth entry (1 when absent)."""
        spec = self.architecture[int(layer)]
        return spec[8] if spec[0].startswith("conv") and len(spec) > 8 else 1

    def _bias_mode(self, layer: str, bias: str) -> str:
        return bias if self.parameter(layer, "bias") is not None else "none"

    def _reference(
        self,
        approximation: str,
        fisher_type: str,
        flavour: str,
        bias: str,
        layer: str,
        names: tuple[str, ...],
    ) -> list[np.ndarray]:
        stored = self.record.get("reference", {})
        if fisher_type not in stored.get(approximation, []) or bias not in stored.get("bias", []):
            raise KeyError(
                f"case {self.id!r} stores no reference {approximation} answer for fisher type "
                f"{fisher_type!r} with bias {bias!r}; stored: "
                f"{ {key: stored[key] for key in sorted(stored)} }"
            )
        # without weight sharing reduce is expand, and only expand is stored
        flavour = flavour if flavour in stored["flavours"] else "expand"
        prefix = reference_key(approximation, fisher_type, flavour, bias, layer)
        return [self.tensors[f"{prefix}.{name}"] for name in names]


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
