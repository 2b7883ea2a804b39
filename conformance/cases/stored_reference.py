"""The reference's answers and the problem's counts, stored with the cases so that runners
without torch can run agreement (and judge conventions and name factors) from data.

For every agreement case the case file holds ``kfac_ref``'s KFAC (``A``, ``B``) for each Fisher
type in :data:`KFAC_FISHER_TYPES` and its EKFAC (``QA``, ``QB``, ``S``, ``S_bias``) for each in
:data:`EKFAC_FISHER_TYPES`, in both bias modes of :data:`BIAS_MODES`, for expand and, where a
layer shares its weights, reduce; the keys are
``<approximation>.<fisher type>.<flavour>.<bias>.<layer>.<factor>``
(:func:`kfac_conformance.neutral.fixtures.reference_key`), and for a grouped convolution
``<...>.<layer>.group<g>.<factor>``, one set per group (its block is block-diagonal over the
groups, :class:`kfac_ref.factors.GroupedFactors`). MC is not stored: its answer depends
on the labels drawn, which another framework cannot reproduce.
"""

from __future__ import annotations

from torch import Tensor

from kfac_conformance.comparison.diagnosis import problem_counts
from kfac_conformance.contract.problem import FLAVOURS, Problem, Request
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.neutral.fixtures import reference_key
from kfac_ref.factors import groups_of

KFAC_FISHER_TYPES = ("type-2", "empirical", "forward-only")
EKFAC_FISHER_TYPES = ("type-2", "empirical")
BIAS_MODES = ("joint", "separate")
KFAC_NAMES = ("A", "B")
EKFAC_NAMES = ("QA", "QB", "S", "S_bias")


def counts_record(problem: Problem) -> dict:
    """``counts`` (``R``, ``N``, ``T``, ``K``) and ``shared_positions`` (per layer) of the
    index entry, as :func:`~kfac_conformance.comparison.diagnosis.problem_counts` finds them."""
    counts, shared = problem_counts(problem)
    return {
        "counts": {name: value if name == "R" else int(value) for name, value in counts.items()},
        "shared_positions": {layer: int(shared.get(layer, 1)) for layer in problem.layers},
    }


def stored_flavours(shared_positions: dict[str, int]) -> tuple[str, ...]:
    """Reduce differs from expand only where a layer shares its weights."""
    return FLAVOURS if any(s > 1 for s in shared_positions.values()) else FLAVOURS[:1]


def reference_record(flavours: tuple[str, ...]) -> dict:
    """The index entry's ``reference``: what the case file holds."""
    return {
        "kfac": list(KFAC_FISHER_TYPES),
        "ekfac": list(EKFAC_FISHER_TYPES),
        "flavours": list(flavours),
        "bias": list(BIAS_MODES),
    }


def reference_tensors(problem: Problem, flavours: tuple[str, ...]) -> dict[str, Tensor]:
    """``kfac_ref``'s answers on ``problem`` (float64, unchanged by the computation)."""
    requests = [
        Request(fisher_type, flavour, bias=bias, approximation=approximation)
        for approximation, fisher_types in (
            ("kfac", KFAC_FISHER_TYPES),
            ("ekfac", EKFAC_FISHER_TYPES),
        )
        for fisher_type in fisher_types
        for flavour in flavours
        for bias in BIAS_MODES
    ]
    tensors: dict[str, Tensor] = {}
    for request in requests:
        names = EKFAC_NAMES if request.approximation == "ekfac" else KFAC_NAMES
        for layer, factors in reference_compute(problem, request).items():
            prefix = reference_key(
                request.approximation, request.fisher_type, request.kfac_approx, request.bias, layer
            )
            groups = groups_of(factors)
            for g, group in enumerate(groups):
                # a grouped convolution's factors per group (fixtures/README.md)
                where = prefix if len(groups) == 1 else f"{prefix}.group{g}"
                for name in names:
                    value = getattr(group, name)
                    if value is not None:
                        tensors[f"{where}.{name}"] = value.detach().clone().contiguous()
    return tensors
