"""A case: a problem described as data (architecture, data, loss) and where KFAC is exact on it.

``exact`` maps ``"<fisher type>/<flavour>"`` to the layers whose KFAC block equals the exact
block of the same curvature (type-2 -> GGN, empirical -> empirical Fisher). The cases
themselves are in :mod:`kfac_conformance.cases.canonical`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kfac_conformance.cases.architectures import build_model, input_vocabulary, parameter_layers
from kfac_conformance.contract.problem import Problem

LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}


@dataclass(frozen=True)
class Case:
    """A problem described as data; ``make_problem`` builds it the same way every time."""

    id: str
    architecture: list
    input_shape: tuple[int, ...]
    loss: str
    reduction: str = "mean"
    num_batches: int = 1
    seed: int = 0
    exact: dict[str, tuple[str, ...]] = field(default_factory=dict)
    per_position: bool = False  # the network acts on each shared position alone
    quick: bool = False  # one of the few cases the quick profile runs
    statement: str = ""
    source: str = ""
    # every batch's size when they differ (``input_shape[0]`` is then the first's); by default
    # ``num_batches`` batches of ``input_shape[0]``
    batch_sizes: tuple[int, ...] = ()
    # every datum has the same input (drawn once), only the labels differ
    identical_inputs: bool = False

    def __post_init__(self) -> None:
        if self.batch_sizes and (
            len(self.batch_sizes) != self.num_batches or self.batch_sizes[0] != self.input_shape[0]
        ):
            raise ValueError(
                f"case {self.id}: batch_sizes {self.batch_sizes} must list num_batches = "
                f"{self.num_batches} sizes, the first input_shape[0] = {self.input_shape[0]}"
            )

    @property
    def sizes(self) -> tuple[int, ...]:
        """Every batch's number of data."""
        return self.batch_sizes or (self.input_shape[0],) * self.num_batches

    def make_problem(self, dtype: torch.dtype = torch.float64) -> Problem:
        generator = torch.Generator().manual_seed(self.seed)
        model = build_model(self.architecture, dtype, generator)
        datum_shape = self.input_shape[1:]
        if self.identical_inputs:
            datum = draw_inputs(self.architecture, (1, *datum_shape), dtype, generator)
        batches = []
        for size in self.sizes:
            if self.identical_inputs:
                X = datum.expand(size, *datum_shape).clone()
            else:
                X = draw_inputs(self.architecture, (size, *datum_shape), dtype, generator)
            with torch.no_grad():
                output = model(X)
            batches.append((X, draw_labels(self.loss, output, generator)))
        loss_func = LOSSES[self.loss](reduction=self.reduction)
        return Problem(model, loss_func, batches, parameter_layers(model), self.id)

    def exact_layers(self, fisher_type: str, flavour: str) -> tuple[str, ...]:
        return self.exact.get(f"{fisher_type}/{flavour}", ())

    @property
    def num_data(self) -> int:
        return sum(self.sizes)


def draw_inputs(
    architecture: list, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator
) -> Tensor:
    """Standard normal inputs, or uniform indices where the network starts with an embedding."""
    vocabulary = input_vocabulary(architecture)
    if vocabulary is not None:
        return torch.randint(vocabulary, shape, generator=generator)
    return torch.randn(shape, generator=generator, dtype=dtype)


def draw_labels(loss: str, output: Tensor, generator: torch.Generator) -> Tensor:
    if loss == "mse":
        return torch.randn(output.shape, generator=generator, dtype=output.dtype)
    if loss == "bce":
        return (torch.rand(output.shape, generator=generator) < 0.5).to(output.dtype)
    shape = (output.shape[0], *output.shape[2:])
    return torch.randint(output.shape[1], shape, generator=generator)
