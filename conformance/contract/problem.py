"""The candidate contract: what a KFAC implementation is given, asked and must return."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from kfac_conformance.contract import conventions
from kfac_conformance.contract.conventions import TUTORIAL, Conventions
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors

FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")
FLAVOURS = ("expand", "reduce")
BIAS_MODES = ("separate", "joint")
APPROXIMATIONS = ("kfac", "ekfac")


CONVOLUTIONS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# the input dimensionality from which a layer's input has shared axes
_SHARED_AXES_FROM_NDIM: dict[type[nn.Module], int] = {nn.Linear: 3, nn.Embedding: 2}


@dataclass
class Problem:
    """One model, loss and data set; built fresh for every check.

    ``layers`` are the module names (as in ``model.named_modules()``) to approximate.
    """

    model: nn.Module
    loss_func: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    layers: list[str]
    case_id: str

    @property
    def dtype(self) -> torch.dtype:
        """The inputs' floating dtype, or the parameters' where the inputs are indices
        (a first ``Embedding`` layer)."""
        X = self.batches[0][0]
        if X.is_floating_point():
            return X.dtype
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.batches[0][0].device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Problem:
        """The same problem on another device or in another floating dtype (labels keep theirs)."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        self.model.to(device=device, dtype=dtype)
        self.batches = [(move(X), move(y)) for X, y in self.batches]
        return self

    def layers_with_shared_axes(self) -> dict[str, list[str]]:
        """The requested Linear and Embedding layers whose inputs have axes between the batch
        axis and the features (an Embedding's indices: any axis after the batch axis), by
        layer type; types without such layers are left out."""
        found: dict[str, set[str]] = {}

        def record(name: str, module: nn.Module, inputs: Tensor) -> None:
            if inputs.ndim >= _SHARED_AXES_FROM_NDIM[type(module)]:
                found.setdefault(type(module).__name__, set()).add(name)

        handles = [
            module.register_forward_hook(
                lambda module, args, output, name=name: record(name, module, args[0])
            )
            for name in self.layers
            if type(module := self.model.get_submodule(name)) in _SHARED_AXES_FROM_NDIM
        ]
        try:
            with torch.no_grad():
                self.model(self.batches[0][0])
        finally:
            for handle in handles:
                handle.remove()
        return {kind: sorted(names) for kind, names in sorted(found.items())}

    def scale_quantities(self) -> dict[str, object]:
        """What scale conventions depend on: data ``N``, the tutorial's ``R``, the loss class
        (and its ``reduction``, which ``R`` already reflects)."""
        num_data = sum(X.shape[0] for X, _ in self.batches)
        # integer CE labels have no class axis: every label element is one loss term
        terms = self.batches[0][1].shape[1:].numel()
        loss = type(self.loss_func).__name__
        reduction = self.loss_func.reduction
        return {
            "N": num_data,
            "R": conventions.reduction_factor(loss, reduction, num_data, terms),
            "loss": loss,
            "reduction": reduction,
        }

    def describe(self) -> dict:
        return {
            "case": self.case_id,
            "loss": f"{type(self.loss_func).__name__}(reduction={self.loss_func.reduction!r})",
            "batch_shapes": [list(X.shape) for X, _ in self.batches],
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "layers": list(self.layers),
        }


@dataclass(frozen=True)
class Request:
    """Which KFAC the candidate is asked for."""

    fisher_type: str = "type-2"
    kfac_approx: str = "expand"
    mc_samples: int = 1
    seed: int = 0
    bias: str = "separate"
    approximation: str = "kfac"  # "ekfac": return EKFACFactors (George et al. 2018)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("fisher_type", self.fisher_type, FISHER_TYPES),
            ("kfac_approx", self.kfac_approx, FLAVOURS),
            ("bias", self.bias, BIAS_MODES),
            ("approximation", self.approximation, APPROXIMATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"Request.{name} must be one of {allowed}, got {value!r}")

    def describe(self) -> str:
        mc = f", mc_samples={self.mc_samples}, seed={self.seed}" if self.fisher_type == "mc" else ""
        ekfac = ", approximation='ekfac'" if self.approximation != "kfac" else ""
        return f"fisher_type={self.fisher_type!r}, kfac_approx={self.kfac_approx!r}, bias={self.bias!r}{mc}{ekfac}"


@dataclass(frozen=True)
class Capabilities:
    """What a candidate claims to support; checks outside it are skipped, and counted."""

    layer_types: frozenset[str] = frozenset({"Linear", "Conv2d"})
    losses: frozenset[str] = frozenset({"MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss"})
    reductions: frozenset[str] = frozenset({"mean", "sum"})
    fisher_types: frozenset[str] = frozenset(FISHER_TYPES)
    flavours: frozenset[str] = frozenset(FLAVOURS)
    bias_modes: frozenset[str] = frozenset(BIAS_MODES)
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[str] = frozenset({"float32", "float64"})
    multiple_batches: bool = True
    # Linear layers on inputs with leading shared axes, (N, S, ..., D), and Embedding layers on
    # index tensors (N, S, ...)
    weight_sharing: bool = True
    # convolutions with groups > 1, whose KFAC is block-diagonal over the groups (a
    # GroupedFactors per such layer): a claim of their layer type alone does not cover them
    grouped_convolutions: bool = False
    approximations: frozenset[str] = frozenset({"kfac"})
    # compute inside a torch.distributed process group, given this rank's shard of the data,
    # returning on every rank the answer for the union of the shards (docs/distributed.md)
    distributed: bool = False
    # how the blocks are scaled (kfac_conformance.contract.conventions); undeclared means the tutorial's
    conventions: Conventions = TUTORIAL

    def unsupported(self, problem: Problem, request: Request) -> str | None:
        """Why ``(problem, request)`` is outside the claim, or ``None`` when inside it.

        The problem's own claims come first (:meth:`unsupported_problem`): outside them no
        request is claimed, and the reason names what the problem needs.
        """
        reason = self.unsupported_problem(problem)
        if reason is not None:
            return reason
        checks = [
            ("fisher types", {request.fisher_type} - self.fisher_types),
            ("flavours", {request.kfac_approx} - self.flavours),
            ("bias modes", {request.bias} - self.bias_modes),
            ("approximations", {request.approximation} - self.approximations),
        ]
        return _first_missing(checks)

    def unsupported_problem(self, problem: Problem) -> str | None:
        """Why ``problem`` is outside the claim whatever the request (its layer types, loss,
        reduction, device, dtype, batches), or ``None``."""
        model_layers = {type(problem.model.get_submodule(name)).__name__ for name in problem.layers}
        checks = [
            ("layer types", model_layers - self.layer_types),
            ("losses", {type(problem.loss_func).__name__} - self.losses),
            ("reductions", {problem.loss_func.reduction} - self.reductions),
            ("devices", {problem.device.type} - self.devices),
            ("dtypes", {str(problem.dtype).removeprefix("torch.")} - self.dtypes),
        ]
        reason = _first_missing(checks)
        if reason is not None:
            return reason
        if not self.grouped_convolutions:
            grouped = [
                name
                for name in problem.layers
                if getattr(problem.model.get_submodule(name), "groups", 1) > 1
            ]
            if grouped:
                return f"not supported: grouped convolutions (layers {grouped} with groups > 1)"
        if len(problem.batches) > 1 and not self.multiple_batches:
            return "not supported: several batches"
        if not self.weight_sharing:
            shared = problem.layers_with_shared_axes()
            if shared:
                layers = "; ".join(f"{kind} layers {names}" for kind, names in shared.items())
                return f"not supported: {layers} on inputs with shared axes"
        return None


def _first_missing(checks: list[tuple[str, set[str]]]) -> str | None:
    for what, missing in checks:
        if missing:
            return f"not supported: {what} {sorted(missing)}"
    return None


@runtime_checkable
class Candidate(Protocol):
    """A KFAC implementation under test."""

    name: str
    capabilities: Capabilities

    def compute(
        self, problem: Problem, request: Request
    ) -> Mapping[str, KroneckerFactors | EKFACFactors | GroupedFactors]:
        """One result per requested layer: :class:`KroneckerFactors` (``EKFACFactors`` for
        ``approximation="ekfac"``), and for a convolution with ``groups > 1`` a
        :class:`GroupedFactors` of one such result per group."""
        ...


__all__ = [
    "APPROXIMATIONS",
    "BIAS_MODES",
    "CONVOLUTIONS",
    "FISHER_TYPES",
    "FLAVOURS",
    "Candidate",
    "Capabilities",
    "Problem",
    "Request",
]
