"""The claim space: its dimensions, the values a claim spans, and what every cell requires.

A *cell* is a (Fisher type, approximation) pair crossed with one value of one other
dimension. The dimensions are what :class:`~kfac_conformance.contract.problem.Capabilities`
lets a candidate claim (flavour, bias mode, reduction, loss, layer type, grouped convolutions,
dtype, several batches) and the features of a problem that the checks must vary (convolution geometry,
shared axes, pooling, the number of data and of loss terms per datum, uneven batches, weight
tying); :mod:`~kfac_conformance.coverage.features` derives every value from the problem.

Devices are claimed too but are no dimension here: the map is built where it runs, and the
CUDA items (``parity/cuda-cpu``) run only where CUDA is.

Every cell of a claim needs a *value* check and an *invariance* check
(:data:`REQUIREMENTS`), unless :data:`EXCLUSIONS` excludes it; each exclusion says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kfac_conformance.contract.problem import (
    APPROXIMATIONS,
    BIAS_MODES,
    FISHER_TYPES,
    FLAVOURS,
    Capabilities,
)

Pair = tuple[str, str]  # (fisher type, approximation)

CONV_GEOMETRY = ("1x1", "kernel>1", "stride>1", "padding>0", "dilation>1")
CONV_GROUPS = ("1", "grouped", "depthwise")
LAYER_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding")
CONVOLUTION_TYPES = frozenset({"Conv1d", "Conv2d", "Conv3d"})
POOLING = (
    "per-position loss",
    "pooled at the end",
    "pooled mid-network",
    "flattened into features",
)
_LOSSES = ("MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss")


def _in_order(claimed: frozenset[str], order: tuple[str, ...]) -> tuple[str, ...]:
    """The claimed values, known ones in ``order`` first (a claim may name unknown ones)."""
    return tuple(
        sorted(
            claimed,
            key=lambda value: (order.index(value), "") if value in order else (len(order), value),
        )
    )


def _shared_axes(claim: Capabilities) -> tuple[str, ...]:
    if "Linear" not in claim.layer_types:
        return ()
    return ("0", "1", "2+") if claim.weight_sharing else ("0",)


def _pooling(claim: Capabilities) -> tuple[str, ...]:
    positions = bool(CONVOLUTION_TYPES & claim.layer_types) or (
        bool({"Linear", "Embedding"} & claim.layer_types) and claim.weight_sharing
    )
    return POOLING if positions else ()


@dataclass(frozen=True)
class Dimension:
    """One axis of the claim space: its name and the values a claim spans on it."""

    name: str
    values: Callable[[Capabilities], tuple[str, ...]]
    about: str


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("flavour", lambda c: _in_order(c.flavours, FLAVOURS), "the requested kfac_approx"),
    Dimension(
        "bias mode",
        lambda c: _in_order(c.bias_modes, BIAS_MODES),
        "the requested bias, where a compared layer has a bias",
    ),
    Dimension(
        "reduction", lambda c: _in_order(c.reductions, ("mean", "sum")), "the loss's reduction"
    ),
    Dimension("loss", lambda c: _in_order(c.losses, _LOSSES), "the loss class"),
    Dimension(
        "layer type",
        lambda c: _in_order(c.layer_types, LAYER_TYPES),
        "the class of a compared layer",
    ),
    Dimension(
        "dtype", lambda c: _in_order(c.dtypes, ("float64", "float32")), "the problem's dtype"
    ),
    Dimension(
        "batches",
        lambda c: (
            ("one", "several, equal sizes", "several, unequal sizes")
            if c.multiple_batches
            else ("one",)
        ),
        "how the data come in batches",
    ),
    Dimension("data", lambda c: ("one datum", "several data"), "the number of data N"),
    Dimension(
        "loss terms per datum",
        lambda c: ("one", "several"),
        "label elements per datum (outputs of MSE and BCE, positions of CE)",
    ),
    Dimension(
        "conv geometry",
        lambda c: CONV_GEOMETRY if CONVOLUTION_TYPES & c.layer_types else (),
        "a compared convolution's kernel, stride, padding and dilation",
    ),
    Dimension(
        "conv groups",
        lambda c: (
            (CONV_GROUPS if c.grouped_convolutions else CONV_GROUPS[:1])
            if CONVOLUTION_TYPES & c.layer_types
            else ()
        ),
        "a compared convolution's groups: 1, more (grouped), one input channel each (depthwise)",
    ),
    Dimension(
        "Linear shared axes",
        _shared_axes,
        "axes between batch and features of a compared Linear layer's input",
    ),
    Dimension(
        "pooling",
        _pooling,
        "where the positions of a compared layer with weight sharing end",
    ),
    Dimension(
        "weight tying",
        lambda c: ("tied",),
        "a compared module called more than once in one forward pass (no claim covers it: "
        "a candidate gives the exact block or raises)",
    ),
)

# What a cell needs, and the check kinds (checks/base.py ``Kind``) that meet each need.
REQUIREMENTS = ("value", "invariance")
VALUE_KINDS = frozenset({"exact", "reference"})
# One MC answer has no deterministic target (its labels are random); its mean over seeds
# has, so for MC a statistical check is a value check.
STATISTICAL_VALUE_FISHER_TYPES = frozenset({"mc"})


def meets(requirement: str, kind: str, fisher_type: str) -> bool:
    """Whether a check of ``kind`` meets ``requirement`` for ``fisher_type``."""
    if requirement == "invariance":
        return kind == "invariance"
    return kind in VALUE_KINDS or (
        kind == "statistical" and fisher_type in STATISTICAL_VALUE_FISHER_TYPES
    )


@dataclass(frozen=True)
class Exclusion:
    """Cells that need nothing (of ``requirements``), and why; ``None`` matches everything."""

    reason: str
    fisher_types: frozenset[str] | None = None
    approximations: frozenset[str] | None = None
    dimension: str | None = None
    values: frozenset[str] | None = None
    requirements: frozenset[str] = frozenset(REQUIREMENTS)

    def covers(
        self, pair: Pair, dimension: str | None, value: str | None, requirement: str
    ) -> bool:
        fisher_type, approximation = pair
        return (
            (self.fisher_types is None or fisher_type in self.fisher_types)
            and (self.approximations is None or approximation in self.approximations)
            and (self.dimension is None or self.dimension == dimension)
            and (self.values is None or value in self.values)
            and requirement in self.requirements
        )


EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion(
        "EKFAC corrects the eigenvalues of a loss curvature; forward-only KFAC has none (its B "
        "is the identity), so EKFAC is not defined for it",
        fisher_types=frozenset({"forward-only"}),
        approximations=frozenset({"ekfac"}),
    ),
    Exclusion(
        "the truth is computed in float64: a float32 answer is held to the candidate's own "
        "float64 answer (parity/float32-float64, an invariance), whose value the float64 "
        "checks hold to the truth; float32 round-off on these problems is too large for a "
        "tolerance that still tells a wrong scale",
        dimension="dtype",
        values=frozenset({"float32"}),
        requirements=frozenset({"value"}),
    ),
    Exclusion(
        "MC labels drawn in float32 and in float64 differ (a float32 uniform takes other bits "
        "of the generator than a float64 one), so an MC answer in float32 has no float64 twin "
        "to be held to, and its statistics run in float64",
        fisher_types=frozenset({"mc"}),
        dimension="dtype",
        values=frozenset({"float32"}),
    ),
    Exclusion(
        "a tied module has no KFAC to be invariant: the checks require its exact block, which "
        "no Kronecker product reaches there, or an exception, and the reference raises",
        dimension="weight tying",
        requirements=frozenset({"invariance"}),
    ),
    Exclusion(
        "forward-only KFAC approximates no curvature: a tied layer has no exact block to hold "
        "it to",
        fisher_types=frozenset({"forward-only"}),
        dimension="weight tying",
    ),
)


def exclusion_for(
    pair: Pair, dimension: str | None, value: str | None, requirement: str
) -> Exclusion | None:
    return next((e for e in EXCLUSIONS if e.covers(pair, dimension, value, requirement)), None)


def claimed_pairs(claim: Capabilities) -> list[Pair]:
    """Every (Fisher type, approximation) the claim spans, excluded pairs included."""
    return [
        (fisher_type, approximation)
        for fisher_type in _in_order(claim.fisher_types, FISHER_TYPES)
        for approximation in _in_order(claim.approximations, APPROXIMATIONS)
    ]


def excluded_pair(pair: Pair) -> Exclusion | None:
    """The exclusion of a whole pair (every cell, every requirement), if any."""
    return next(
        (
            e
            for e in EXCLUSIONS
            if e.dimension is None
            and e.requirements == frozenset(REQUIREMENTS)
            and e.covers(pair, None, None, REQUIREMENTS[0])
        ),
        None,
    )


def claimed_values(claim: Capabilities) -> list[tuple[str, str]]:
    """Every (dimension, value) the claim spans, in the dimensions' order."""
    return [(d.name, value) for d in DIMENSIONS for value in d.values(claim)]
