"""Hypothesis strategies of whole KFAC problems within a candidate's claimed capabilities.

:func:`kfac_problems` draws a :class:`DrawnCase`: a network in the JSON architecture language
(:mod:`kfac_conformance.cases.architectures`), its data, loss, reduction, batches of uneven sizes and
dtype, with the exactness map that :func:`exactness_map` derives from the architecture.
:func:`kfac_requests` draws what a candidate is asked for. Everything shrinks towards one
linear layer of width one on one datum in float64.

Drawn, each part only where the capabilities claim it:

- an MLP on ``(N, *shared, D)`` inputs (zero to two shared axes), or a CNN on ``(N, C, H, W)``
  with Conv2d layers of any kernel, stride, padding and dilation (1x1 included);
- with or without bias per layer, an activation (or none) between layers;
- the shared axes kept to the loss (MSE or BCE on every position, CE on multi-dimensional
  outputs), sum- or mean-pooled, or flattened, after any number of layers;
- MSE, CE or BCE with mean or sum reduction, one to three batches of one to four data each;
- float64, and float32 where claimed.

A drawn case rebuilds itself from its ``repr`` (a frozen dataclass), which is what the
``--case`` files of ``kfac-conformance fuzz`` hold.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from kfac_conformance.cases.architectures import build_model, parameter_layers
from kfac_conformance.cases.canonical import ESCHENHAGEN, LOSSES, TUTORIAL, Case, draw_labels
from kfac_conformance.contract.problem import (
    BIAS_MODES,
    FISHER_TYPES,
    FLAVOURS,
    Capabilities,
    Problem,
    Request,
)

ACTIVATIONS = ("none", "tanh", "sigmoid", "relu")
SHARED_AXES_ENDINGS = ("keep", "sum", "mean", "flatten")
LOSS_NAMES = {"mse": "MSELoss", "ce": "CrossEntropyLoss", "bce": "BCEWithLogitsLoss"}
PARAMETER_KINDS = ("linear", "conv2d")


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
            X = torch.randn((size, *self.input_shape[1:]), generator=generator, dtype=dtype)
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


# --- shapes and the exactness map -----------------------------------------------------------


def output_shapes(architecture: list, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape (without the batch axis) after every module of the architecture."""
    shape, shapes = tuple(input_shape[1:]), []
    for kind, *args in architecture:
        if kind == "linear":
            shape = (*shape[:-1], args[1])
        elif kind == "conv2d":
            _, c_out, kernel, stride, padding, dilation, _ = args
            spatial = tuple(
                conv_output_size(size, kernel, stride, padding, dilation) for size in shape[1:]
            )
            shape = (c_out, *spatial)
        elif kind in ("sum", "mean"):
            shape = tuple(size for axis, size in enumerate(shape, 1) if axis not in args[0])
        elif kind == "flatten":
            shape = (math.prod(shape),)
        elif kind == "movedim":
            moved = list(shape)
            source, destination = (axis - 1 if axis > 0 else axis for axis in args)
            moved.insert(destination % (len(moved) + 1), moved.pop(source))
            shape = tuple(moved)
        shapes.append(shape)
    return shapes


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """``floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1`` (PyTorch's Conv2d)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _positions(spec: list, shape: tuple[int, ...]) -> int:
    """Shared positions a parameter layer's output has per datum."""
    return math.prod(shape[1:]) if spec[0] == "conv2d" else math.prod(shape[:-1])


def _pointwise(spec: list) -> bool:
    """A parameter layer that maps every shared position on its own, the same way."""
    if spec[0] == "linear":
        return True
    _, _, _, kernel, stride, padding, _, _ = spec
    return kernel == 1 and stride == 1 and padding == 0


def exactness_map(
    architecture: list, input_shape: tuple[int, ...], loss: str, num_data: int
) -> dict[str, tuple[str, ...]]:
    r"""Where KFAC equals the exact curvature block, ``{"<fisher type>/<flavour>": layers}``.

    Three theorems, each applied only where its assumptions hold literally:

    1. One datum, no shared positions in any layer: type-2 KFAC is the GGN block and empirical
       KFAC the empirical Fisher block, in both flavours (KFAC tutorial, arXiv 2507.05127: the
       sum over data has one term, so the Kronecker factorisation is an identity).
    2. MSE and no shared positions from a layer on: type-2 KFAC of the layer is its GGN block
       when everything after it is linear (KFAC tutorial, deep linear networks: the Jacobian
       :math:`J` from the layer's output to the network's output and the loss Hessian are the
       same for every datum, so :math:`\sum_n a_n a_n^\top \otimes J^\top H J` factorises;
       the layer's input :math:`a_n` may come from anything before it).
    3. MSE, a layer with shared positions and only pointwise linear layers after it
       (Eschenhagen et al. 2023): KFAC-expand is exact when the loss sees every position, and
       KFAC-reduce when the positions are sum- or mean-pooled (then linear layers only).
    """
    specs = list(enumerate(architecture))
    shapes = output_shapes(architecture, input_shape)
    layers = [(i, spec) for i, spec in specs if spec[0] in PARAMETER_KINDS]
    positions = {i: _positions(spec, shapes[i]) for i, spec in layers}
    if num_data == 1 and all(count == 1 for count in positions.values()):
        names = tuple(str(i) for i, _ in layers)
        keys = ("type-2/expand", "type-2/reduce", "empirical/expand", "empirical/reduce")
        return dict.fromkeys(keys, names)
    exact: dict[str, list[str]] = {"type-2/expand": [], "type-2/reduce": []}
    if loss != "mse":
        return {}
    for i, _ in layers:
        tail = [spec for _, spec in specs[i + 1 :]]
        if any(spec[0] in ACTIVATIONS or spec[0] == "movedim" for spec in tail):
            continue  # a nonlinearity after the layer: its Jacobian depends on the datum
        if all(positions[j] == 1 for j, _ in layers if j >= i):
            exact["type-2/expand"].append(str(i))
            exact["type-2/reduce"].append(str(i))
            continue
        ending = next((spec[0] for spec in tail if spec[0] in ("sum", "mean", "flatten")), None)
        before_ending = []
        for spec in tail:
            if spec[0] in ("sum", "mean", "flatten"):
                break
            before_ending.append(spec)
        if not all(_pointwise(spec) for spec in before_ending):
            continue
        if ending is None:
            exact["type-2/expand"].append(str(i))
        elif ending in ("sum", "mean"):
            exact["type-2/reduce"].append(str(i))
    return {key: tuple(names) for key, names in exact.items() if names}


# --- drawing ----------------------------------------------------------------------------------


def _claims(capabilities: Capabilities, what: str, value: str) -> bool:
    return value in getattr(capabilities, what)


@st.composite
def _mlp(draw, capabilities: Capabilities, loss: str, max_layers: int, max_width: int):
    """Linear layers on ``(N, *shared, D)``; the shared axes kept, pooled or flattened."""
    axes = []
    if capabilities.weight_sharing:
        axes = draw(st.lists(st.integers(1, 3), max_size=2), label="shared axes")
    depth = draw(st.integers(1, max_layers), label="linear layers")
    widths = [draw(st.integers(1, max_width), label="input width")]
    ending, end_after = "keep", depth
    if axes:
        ending = draw(st.sampled_from(SHARED_AXES_ENDINGS), label="shared axes ending")
        if ending != "keep":
            end_after = draw(st.integers(0, depth), label="shared axes end after layer")
    architecture: list = []
    dims = list(range(1, len(axes) + 1))
    width = widths[0]
    for index in range(depth):
        if index == end_after:
            architecture.append(["flatten"] if ending == "flatten" else [ending, dims])
            width = width * math.prod(axes) if ending == "flatten" else width
        out = draw(st.integers(1, max_width), label="width")
        if index == depth - 1 and loss == "ce":
            out = max(out, 2)
        bias = draw(st.booleans(), label="bias")
        architecture.append(["linear", width, out, bias])
        width = out
        if index < depth - 1:
            activation = draw(st.sampled_from(ACTIVATIONS), label="activation")
            if activation != "none":
                architecture.append([activation])
    if end_after == depth and ending != "keep":
        architecture.append(["flatten"] if ending == "flatten" else [ending, dims])
    if loss == "ce" and axes and ending == "keep":
        architecture.append(["movedim", -1, 1])  # classes on axis 1, positions after it
    return architecture, (*axes, widths[0])


@st.composite
def _cnn(draw, capabilities: Capabilities, loss: str, max_layers: int, max_width: int):
    """Conv2d layers on ``(N, C, H, W)``; the feature map kept, pooled or flattened into
    Linear layers."""
    height, width = draw(st.integers(1, 5), label="height"), draw(st.integers(1, 5), label="width")
    channels = draw(st.integers(1, 3), label="input channels")
    depth = draw(st.integers(1, max_layers), label="conv layers")
    linear = "Linear" in capabilities.layer_types
    endings = SHARED_AXES_ENDINGS if linear else ("keep",)
    ending = draw(st.sampled_from(endings), label="feature map ending")
    architecture: list = []
    shape, c_in = (height, width), channels
    for index in range(depth):
        padding = draw(st.integers(0, 1), label="padding")
        dilation = draw(st.integers(1, 2), label="dilation")
        stride = draw(st.integers(1, 2), label="stride")
        largest = min((size + 2 * padding - 1) // dilation + 1 for size in shape)
        kernel = draw(st.integers(1, max(1, min(3, largest))), label="kernel")
        c_out = draw(st.integers(1, max_width), label="channels")
        last = index == depth - 1 and ending == "keep"
        if last and loss == "ce":
            c_out = max(c_out, 2)
        bias = draw(st.booleans(), label="bias")
        architecture.append(["conv2d", c_in, c_out, kernel, stride, padding, dilation, bias])
        shape = tuple(conv_output_size(s, kernel, stride, padding, dilation) for s in shape)
        c_in = c_out
        if not last:
            activation = draw(st.sampled_from(ACTIVATIONS), label="activation")
            if activation != "none":
                architecture.append([activation])
    if ending != "keep":
        architecture.append(["flatten"] if ending == "flatten" else [ending, [2, 3]])
        features = c_in * math.prod(shape) if ending == "flatten" else c_in
        out = draw(st.integers(2 if loss == "ce" else 1, max_width), label="width")
        architecture.append(["linear", features, out, draw(st.booleans(), label="bias")])
    return architecture, (channels, height, width)


@st.composite
def kfac_problems(
    draw,
    capabilities: Capabilities | None = None,
    max_layers: int = 3,
    max_width: int = 4,
    max_data: int = 4,
    max_batches: int = 3,
) -> DrawnCase:
    """A problem inside ``capabilities`` (everything the contract can express by default)."""
    capabilities = capabilities or Capabilities()
    losses = [name for name, cls in LOSS_NAMES.items() if cls in capabilities.losses]
    kinds = [
        kind
        for kind, layer in (("mlp", "Linear"), ("cnn", "Conv2d"))
        if layer in capabilities.layer_types
    ]
    reductions = sorted(capabilities.reductions)
    dtypes = [dtype for dtype in ("float64", "float32") if dtype in capabilities.dtypes]
    if not (losses and kinds and reductions and dtypes):
        raise ValueError(
            f"the capabilities claim no problem the fuzzer can draw: losses "
            f"{sorted(capabilities.losses)}, layer types {sorted(capabilities.layer_types)}, "
            f"reductions {reductions}, dtypes {sorted(capabilities.dtypes)}"
        )
    dtype = draw(st.sampled_from(dtypes), label="dtype")
    kind = draw(st.sampled_from(kinds), label="network")
    loss = draw(st.sampled_from(losses), label="loss")
    build = _mlp if kind == "mlp" else _cnn
    architecture, sample_shape = draw(build(capabilities, loss, max_layers, max_width))
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
        _positions(spec, shape) > 1
        for spec, shape in zip(
            architecture, output_shapes(architecture, fields["input_shape"]), strict=True
        )
        if spec[0] in PARAMETER_KINDS
    )
    return DrawnCase(
        id=case_id(fields),
        exact=exact,
        per_position=kind == "mlp" and len(sample_shape) > 1 and _keeps_positions(architecture),
        statement="drawn by kfac-conformance fuzz; exact layers by exactness_map",
        source=ESCHENHAGEN if shared else TUTORIAL,
        **fields,
    )


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
