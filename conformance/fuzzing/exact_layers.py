"""Where KFAC is exact on a drawn architecture: the shapes after every module, and the
exactness map (:func:`exactness_map`) that the fuzzer's drawn cases carry."""

from __future__ import annotations

import math

from kfac_conformance.cases.architectures import PARAMETER_KINDS, resolve_tied, tied_layers

ACTIVATIONS = ("none", "tanh", "sigmoid", "relu")
CONV_KINDS = ("conv1d", "conv2d", "conv3d")


def output_shapes(architecture: list, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The shape (without the batch axis) after every module of the architecture."""
    shape, shapes = tuple(input_shape[1:]), []
    for spec in architecture:
        kind, *args = resolve_tied(architecture, spec)
        if kind == "linear":
            shape = (*shape[:-1], args[1])
        elif kind == "embedding":  # indices in, a vector of ``dim`` out at each of them
            shape = (*shape, args[1])
        elif kind in CONV_KINDS:
            _, c_out, kernel, stride, padding, dilation, *_ = args
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
    """``floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1`` (PyTorch's
    convolutions, along each spatial axis)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def positions(spec: list, shape: tuple[int, ...]) -> int:
    """Shared positions a parameter layer's output has per datum."""
    return math.prod(shape[1:]) if spec[0] in CONV_KINDS else math.prod(shape[:-1])


def _pointwise(spec: list) -> bool:
    """A parameter layer that maps every shared position on its own, the same way."""
    if spec[0] in ("linear", "embedding"):
        return True
    kernel, stride, padding = spec[3:6]
    return kernel == 1 and stride == 1 and padding == 0


def groups(spec: list) -> int:
    """A parameter layer's groups: a convolution spec's optional ninth entry, else 1."""
    return spec[8] if spec[0] in CONV_KINDS and len(spec) > 8 else 1


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

    An embedding is the linear layer it is on one-hot inputs, so the theorems treat it as one.
    All three assume each layer is used once: with a module applied twice the map is empty
    (only the weight-tying properties run on such problems, see ``FuzzProperty``).

    A grouped convolution's KFAC is block-diagonal over its groups, so it can be exact only
    where the exact block is: for type-2 with MSE when it is the last parameter layer (its
    groups' outputs then reach the loss apart, and MSE's Hessian is a multiple of the
    identity, so the cross-group GGN blocks vanish and each group is an ungrouped layer of
    the theorems). Elsewhere, and for the empirical Fisher (a per-datum outer product
    :math:`gg^\top` couples the groups), it is left out (:func:`_without_coupled_groups`).
    """
    exact = _exact_ignoring_groups(architecture, input_shape, loss, num_data)
    return _without_coupled_groups(exact, architecture, loss)


def _without_coupled_groups(
    exact: dict[str, tuple[str, ...]], architecture: list, loss: str
) -> dict[str, tuple[str, ...]]:
    parameter_layers = [i for i, spec in enumerate(architecture) if spec[0] in PARAMETER_KINDS]
    apart = [] if loss != "mse" else parameter_layers[-1:]
    coupled = {str(i) for i in parameter_layers if groups(architecture[i]) > 1 and i not in apart}
    kept = {
        key: tuple(
            layer
            for layer in layers
            if layer not in coupled
            and not (key.startswith("empirical/") and groups(architecture[int(layer)]) > 1)
        )
        for key, layers in exact.items()
    }
    return {key: layers for key, layers in kept.items() if layers}


def _exact_ignoring_groups(
    architecture: list, input_shape: tuple[int, ...], loss: str, num_data: int
) -> dict[str, tuple[str, ...]]:
    if tied_layers(architecture):
        return {}
    specs = list(enumerate(architecture))
    shapes = output_shapes(architecture, input_shape)
    layers = [(i, spec) for i, spec in specs if spec[0] in PARAMETER_KINDS]
    counts = {i: positions(spec, shapes[i]) for i, spec in layers}
    if num_data == 1 and all(count == 1 for count in counts.values()):
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
        if all(counts[j] == 1 for j, _ in layers if j >= i):
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
