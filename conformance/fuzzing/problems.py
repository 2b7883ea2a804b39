"""Hypothesis strategies of whole KFAC problems within a candidate's claimed capabilities.

:func:`kfac_problems` draws a :class:`DrawnCase`: a network in the JSON architecture language
(:mod:`kfac_conformance.cases.architectures`), its data, loss, reduction, batches of uneven sizes and
dtype, with the exactness map that :func:`~kfac_conformance.fuzzing.exact_layers.exactness_map`
derives from the architecture.
:func:`kfac_requests` draws what a candidate is asked for. Everything shrinks towards one
linear layer of width one on one datum in float64.

Drawn, each part only where the capabilities claim it:

- an MLP on ``(N, *shared, D)`` inputs (zero to two shared axes), the same after an Embedding
  on ``(N, *shared)`` indices, or a CNN on ``(N, C, *spatial)`` with Conv1d, Conv2d or Conv3d
  layers (one kind per network) of any kernel, stride, padding and dilation (1x1 included);
- with or without bias per layer, an activation (or none) between layers;
- the shared axes kept to the loss (MSE or BCE on every position, CE on multi-dimensional
  outputs), sum- or mean-pooled, or flattened, after any number of layers;
- MSE, CE or BCE with mean or sum reduction, one to three batches of one to four data each
  (uneven sizes included);
- float64, and float32 where claimed (one problem in four);
- no problem whose outputs saturate (:data:`MIN_UNCERTAINTY`): a float64 comparison cannot
  judge its curvature;
- with ``weight_tying`` (when a fuzz property tests it), a square Linear or Conv2d layer applied
  twice in one network in four, the ``["tied", index]`` of the architecture language.

A drawn case rebuilds itself from its ``repr`` (a frozen dataclass), which is what the
``--case`` files of ``kfac-conformance fuzz`` hold.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from hypothesis import assume
from hypothesis import strategies as st

from kfac_conformance.cases.architectures import build_model, parameter_layers
from kfac_conformance.cases.canonical import ESCHENHAGEN, LOSSES, TUTORIAL, Case, draw_labels
from kfac_conformance.cases.case import draw_inputs
from kfac_conformance.contract.problem import (
    BIAS_MODES,
    FISHER_TYPES,
    FLAVOURS,
    Capabilities,
    Problem,
    Request,
)
from kfac_conformance.fuzzing.exact_layers import (
    ACTIVATIONS,
    PARAMETER_KINDS,
    conv_output_size,
    exactness_map,
    output_shapes,
    positions,
)

SHARED_AXES_ENDINGS = ("keep", "sum", "mean", "flatten")
# A float64 comparison cannot judge a problem whose outputs saturate: the loss Hessian of a
# probability p near 1 holds 1 - p, whose rounding error is 1e-16 / (1 - p) relative to it;
# from 1 - p >= 1e-4 on that is 1e-12, a hundredth of the float64 tolerance. Below it, drawn
# problems failed on the reference (ekfac/correction-exact-type-2, relative error 0.011 where
# 1 - p = 1e-21 on every datum: a CNN's logits sum-pooled over 56 positions).
MIN_UNCERTAINTY = 1e-4
# float32 problems run few properties (numbers are compared on float64 problems only): one
# problem in four, where claimed
DTYPES = ("float64", "float64", "float64", "float32")
LOSS_NAMES = {"mse": "MSELoss", "ce": "CrossEntropyLoss", "bce": "BCEWithLogitsLoss"}
CONVOLUTION_TYPES = {1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}  # by spatial axes


@dataclass(frozen=True)
class DrawnCase(Case):
    """A :class:`Case` with batches of uneven sizes and its own dtype.

    ``input_shape[0]`` is the first batch's size; ``batch_sizes`` lists every batch's.
    """

    batch_sizes: tuple[int, ...] = (1,)
    dtype: str = "float64"

    def make_problem(self, dtype: torch.dtype | None = None) -> Problem:
        dtype = dtype or getattr(torch, self.dtype)
        generator = torch.Generator().manual_seed(self.seed)
        model = build_model(self.architecture, dtype, generator)
        batches = []
        for size in self.batch_sizes:
            X = draw_inputs(self.architecture, (size, *self.input_shape[1:]), dtype, generator)
            with torch.no_grad():
                output = model(X)
            batches.append((X, draw_labels(self.loss, output, generator)))
        loss_func = LOSSES[self.loss](reduction=self.reduction)
        return Problem(model, loss_func, batches, parameter_layers(model), self.id)

    @property
    def num_data(self) -> int:
        return sum(self.batch_sizes)


def case_id(fields: dict) -> str:
    """A short stable id from the drawn fields (the case's repr is its full description)."""
    digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:10]
    return f"fuzz-{digest}"


@dataclass(frozen=True)
class _Size:
    """How large a drawn network may be, and whether a module may be applied twice."""

    max_layers: int
    max_width: int
    weight_tying: bool


# One drawn network in four has a module applied twice, when a property tests weight tying
# (the rest are for every other property); shrinking removes it first.
_TIED = st.sampled_from((False, False, False, True))


def _tied_position(draw, weight_tying: bool, depth: int) -> int | None:
    """Before which layer (``depth``: after the last) a square layer applied twice goes."""
    if not (weight_tying and draw(_TIED, label="a module applied twice")):
        return None
    return draw(st.integers(0, depth), label="position of the module applied twice")


def _applied_twice(draw, architecture: list, spec: list) -> None:
    """Append ``spec``, an optional activation, and ``spec`` applied once more."""
    position = len(architecture)
    architecture.append(spec)
    activation = draw(st.sampled_from(ACTIVATIONS), label="activation between the two uses")
    if activation != "none":
        architecture.append([activation])
    architecture.append(["tied", position])


@st.composite
def _mlp(draw, capabilities: Capabilities, loss: str, size: _Size, embedding: bool = False):
    """Linear layers on ``(N, *shared, D)``; the shared axes kept, pooled or flattened. With
    ``embedding``, the first layer is an Embedding on ``(N, *shared)`` indices (and no
    module is applied twice: the indices cannot be fed to a square layer)."""
    axes = []
    if capabilities.weight_sharing:
        axes = draw(st.lists(st.integers(1, 3), max_size=2), label="shared axes")
    # Linear layers after an embedding only where Linear is claimed
    most = size.max_layers if not embedding or "Linear" in capabilities.layer_types else 1
    depth = draw(st.integers(1, most), label="linear layers")
    tied_at = None if embedding else _tied_position(draw, size.weight_tying, depth)
    widths = [draw(st.integers(1, size.max_width), label="input width")]
    ending, end_after = "keep", depth
    if axes:
        ending = draw(st.sampled_from(SHARED_AXES_ENDINGS), label="shared axes ending")
        if ending != "keep":
            # indices are neither pooled nor flattened: an embedding's positions end after it
            first = 1 if embedding else 0
            end_after = draw(st.integers(first, depth), label="shared axes end after layer")
    architecture: list = []
    dims = list(range(1, len(axes) + 1))
    width = widths[0]
    for index in range(depth):
        if index == end_after:
            architecture.append(["flatten"] if ending == "flatten" else [ending, dims])
            width = width * math.prod(axes) if ending == "flatten" else width
        if index == tied_at:
            _applied_twice(draw, architecture, ["linear", width, width, draw(st.booleans())])
        out = draw(st.integers(1, size.max_width), label="width")
        if index == depth - 1 and loss == "ce":
            out = max(out, 2)
        if embedding and index == 0:  # ``width`` is the number of indices
            architecture.append(["embedding", width, out])
        else:
            architecture.append(["linear", width, out, draw(st.booleans(), label="bias")])
        width = out
        if index < depth - 1:
            activation = draw(st.sampled_from(ACTIVATIONS), label="activation")
            if activation != "none":
                architecture.append([activation])
    if end_after == depth and ending != "keep":
        architecture.append(["flatten"] if ending == "flatten" else [ending, dims])
        width = width * math.prod(axes) if ending == "flatten" else width
    if tied_at == depth:
        _applied_twice(draw, architecture, ["linear", width, width, draw(st.booleans())])
    if loss == "ce" and axes and ending == "keep":
        architecture.append(["movedim", -1, 1])  # classes on axis 1, positions after it
    return architecture, tuple(axes) if embedding else (*axes, widths[0])


@st.composite
def _cnn(draw, capabilities: Capabilities, loss: str, size: _Size):
    """Convolutions of one dimension (1, 2 or 3, among the claimed) on ``(N, C, *spatial)``,
    grouped (any divisor of the input channels) where the claim covers it; the feature map
    kept, pooled or flattened into Linear layers."""
    claimed = [d for d, layer in CONVOLUTION_TYPES.items() if layer in capabilities.layer_types]
    # no draw where one is claimed, so that a Conv2d-only claim draws what it always drew
    dims = draw(st.sampled_from(claimed), label="spatial axes") if len(claimed) > 1 else claimed[0]
    kind = f"conv{dims}d"
    # 3-D problems kept small (up to 3 per axis, kernels up to 2, two layers): the oracle's
    # cost grows with the cube of both
    volumetric = dims == 3
    spatial = tuple(
        draw(st.integers(1, 3 if volumetric else 5), label="spatial size") for _ in range(dims)
    )
    largest_kernel = 2 if volumetric else 3
    channels = draw(st.integers(1, 3), label="input channels")
    most = min(size.max_layers, 2) if volumetric else size.max_layers
    depth = draw(st.integers(1, most), label="conv layers")
    # before one of the conv layers, never after the last (its channels may be the output's)
    tied_at = _tied_position(draw, size.weight_tying, depth - 1)
    linear = "Linear" in capabilities.layer_types
    endings = SHARED_AXES_ENDINGS if linear else ("keep",)
    ending = draw(st.sampled_from(endings), label="feature map ending")
    architecture: list = []
    shape, c_in = spatial, channels
    for index in range(depth):
        if index == tied_at:
            geometry = draw(
                _conv_geometry(shape, uses=2, largest_kernel=largest_kernel),
                label="geometry applied twice",
            )
            shape = _conv_shape(_conv_shape(shape, *geometry), *geometry)
            spec = [kind, c_in, c_in, *geometry, draw(st.booleans())]
            _applied_twice(draw, architecture, spec)
        kernel, stride, padding, dilation = draw(
            _conv_geometry(shape, largest_kernel=largest_kernel), label="geometry"
        )
        c_out = draw(st.integers(1, size.max_width), label="channels")
        last = index == depth - 1 and ending == "keep"
        if last and loss == "ce":
            c_out = max(c_out, 2)
        bias = draw(st.booleans(), label="bias")
        spec = [kind, c_in, c_out, kernel, stride, padding, dilation, bias]
        if capabilities.grouped_convolutions:
            # 1 first: a grouped layer shrinks to an ungrouped one; c_out rounded down to a
            # multiple of the groups (never below them, never above the width drawn)
            divisors = [groups for groups in range(1, c_in + 1) if c_in % groups == 0]
            groups = draw(st.sampled_from(divisors), label="groups")
            c_out = spec[2] = groups * max(1, c_out // groups)
            spec += [groups] if groups > 1 else []
        architecture.append(spec)
        shape = _conv_shape(shape, kernel, stride, padding, dilation)
        c_in = c_out
        if not last:
            activation = draw(st.sampled_from(ACTIVATIONS), label="activation")
            if activation != "none":
                architecture.append([activation])
    if ending != "keep":
        pooled = list(range(2, 2 + dims))
        architecture.append(["flatten"] if ending == "flatten" else [ending, pooled])
        features = c_in * math.prod(shape) if ending == "flatten" else c_in
        out = draw(st.integers(2 if loss == "ce" else 1, size.max_width), label="width")
        architecture.append(["linear", features, out, draw(st.booleans(), label="bias")])
    return architecture, (channels, *spatial)


def _conv_shape(shape: tuple[int, ...], kernel, stride, padding, dilation) -> tuple[int, ...]:
    return tuple(conv_output_size(size, kernel, stride, padding, dilation) for size in shape)


@st.composite
def _conv_geometry(
    draw, shape: tuple[int, ...], uses: int = 1, largest_kernel: int = 3
) -> tuple[int, int, int, int]:
    """``(kernel, stride, padding, dilation)`` of a convolution that fits ``shape``, and its own
    output shape as often as it is applied (a kernel of 1 always fits). The dilation is drawn
    after the kernel, among those that fit it, so that a dilation often matters."""
    padding = draw(st.integers(0, 1), label="padding")
    stride = draw(st.integers(1, 2), label="stride")

    def fits(kernel: int, dilation: int) -> bool:
        current = shape
        for _ in range(uses):
            if min(current) + 2 * padding - dilation * (kernel - 1) < 1:
                return False
            current = _conv_shape(current, kernel, stride, padding, dilation)
        return True

    largest = max(kernel for kernel in range(1, largest_kernel + 1) if fits(kernel, 1))
    kernel = draw(st.integers(1, largest), label="kernel")
    dilation = draw(st.integers(1, 2 if fits(kernel, 2) else 1), label="dilation")
    return kernel, stride, padding, dilation


@st.composite
def kfac_problems(
    draw,
    capabilities: Capabilities | None = None,
    max_layers: int = 3,
    max_width: int = 4,
    max_data: int = 4,
    max_batches: int = 3,
    weight_tying: bool = False,
) -> DrawnCase:
    """A problem inside ``capabilities`` (everything the contract can express by default);
    with ``weight_tying``, one in four has a module applied twice."""
    capabilities = capabilities or Capabilities()
    losses = [name for name, cls in LOSS_NAMES.items() if cls in capabilities.losses]
    claimed = capabilities.layer_types
    kinds = [
        kind
        for kind, layers in (
            ("mlp", {"Linear"}),
            ("cnn", set(CONVOLUTION_TYPES.values())),
            ("embedding", {"Embedding"}),
        )
        if layers & claimed
    ]
    reductions = sorted(capabilities.reductions)
    dtypes = [dtype for dtype in DTYPES if dtype in capabilities.dtypes]
    if not (losses and kinds and reductions and dtypes):
        raise ValueError(
            f"the capabilities claim no problem the fuzzer can draw: losses "
            f"{sorted(capabilities.losses)}, layer types {sorted(capabilities.layer_types)}, "
            f"reductions {reductions}, dtypes {sorted(capabilities.dtypes)}"
        )
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    kind = draw(st.sampled_from(kinds), label="network")
    loss = draw(st.sampled_from(losses), label="loss")
    size = _Size(max_layers, max_width, weight_tying)
    if kind == "cnn":
        architecture, sample_shape = draw(_cnn(capabilities, loss, size))
    else:
        network = _mlp(capabilities, loss, size, embedding=kind == "embedding")
        architecture, sample_shape = draw(network)
    batches = draw(st.integers(1, max_batches if capabilities.multiple_batches else 1))
    batch_sizes = tuple(
        draw(st.lists(st.integers(1, max_data), min_size=batches, max_size=batches), label="sizes")
    )
    fields = {
        "architecture": architecture,
        "input_shape": (batch_sizes[0], *sample_shape),
        "loss": loss,
        "reduction": draw(st.sampled_from(reductions), label="reduction"),
        "num_batches": len(batch_sizes),
        "seed": draw(st.integers(0, 2**16 - 1), label="seed"),
        "batch_sizes": batch_sizes,
        "dtype": dtype,
    }
    exact = exactness_map(architecture, fields["input_shape"], loss, sum(batch_sizes))
    shared = any(
        positions(spec, shape) > 1
        for spec, shape in zip(
            architecture, output_shapes(architecture, fields["input_shape"]), strict=True
        )
        if spec[0] in PARAMETER_KINDS
    )
    case = DrawnCase(
        id=case_id(fields),
        exact=exact,
        per_position=kind == "mlp" and len(sample_shape) > 1 and _keeps_positions(architecture),
        statement="drawn by kfac-conformance fuzz; exact layers by exactness_map",
        source=ESCHENHAGEN if shared else TUTORIAL,
        **fields,
    )
    assume(least_uncertainty(case) >= MIN_UNCERTAINTY)
    return case


def least_uncertainty(case: Case) -> float:
    """The smallest ``1 - p`` of the most likely class (CE) or label (BCE) over the problem's
    data and positions, computed without cancellation; 1 for MSE."""
    if case.loss == "mse":
        return 1.0
    problem = case.make_problem(torch.float64)
    with torch.no_grad():
        outputs = [problem.model(X) for X, _ in problem.batches]
    if case.loss == "bce":
        return min(torch.minimum(f.sigmoid(), (-f).sigmoid()).min().item() for f in outputs)
    least = 1.0
    for f in outputs:
        probabilities = f.softmax(dim=1)
        likeliest = probabilities.argmax(dim=1, keepdim=True)
        others = probabilities.scatter(1, likeliest, 0.0).sum(dim=1)
        least = min(least, others.min().item())
    return least


def _keeps_positions(architecture: list) -> bool:
    return not any(spec[0] in ("sum", "mean", "flatten") for spec in architecture)


@st.composite
def kfac_requests(draw, capabilities: Capabilities | None = None) -> Request:
    """A request inside ``capabilities``. The fuzz properties use its Fisher type and flavour
    and choose the rest themselves (every claimed bias mode; their own MC samples and seeds,
    which their statistics need)."""
    capabilities = capabilities or Capabilities()
    fisher_type = draw(st.sampled_from([f for f in FISHER_TYPES if f in capabilities.fisher_types]))
    return Request(
        fisher_type,
        draw(st.sampled_from([f for f in FLAVOURS if f in capabilities.flavours])),
        mc_samples=draw(st.integers(1, 4)) if fisher_type == "mc" else 1,
        seed=draw(st.integers(0, 2**16 - 1)) if fisher_type == "mc" else 0,
        bias=draw(st.sampled_from([b for b in BIAS_MODES if b in capabilities.bias_modes])),
    )


__all__ = ["DrawnCase", "exactness_map", "kfac_problems", "kfac_requests", "output_shapes"]
