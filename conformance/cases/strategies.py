"""Hypothesis strategies for KFAC problems whose exact answer the theory knows.

:func:`deep_linear_cases` draws deep linear networks (linear layers only, MSE loss) as
:class:`~kfac_conformance.cases.canonical.Case` objects with their ``exact`` maps, following the theory
used in :mod:`kfac_conformance.cases.canonical`:

- without weight sharing (no shared axes, or all of size one), KFAC type-2 is the GGN block of
  every layer in both flavours, on any number of data and batches (KFAC tutorial);
- with shared axes and MSE on every position, KFAC-expand is exact for every layer
  (Eschenhagen et al. 2023);
- with the shared axes sum- or mean-pooled before the loss, KFAC-reduce is exact for every
  layer and KFAC-expand for the layers after the pooling.

Usage in a library's own tests::

    from hypothesis import given
    from kfac_conformance.cases.strategies import deep_linear_cases

    @given(deep_linear_cases())
    def test_my_kfac_is_exact(case):
        problem = case.make_problem()
        for key, layers in case.exact.items():
            ...  # compare my KFAC of `layers` with kfac_conformance.oracle.blocks.exact_blocks

A case's ``repr`` rebuilds it (``Case`` is a dataclass); :func:`reproduction` prints the lines.
For whole problems beyond deep linear networks, compared by every property of the catalogue,
see :func:`kfac_conformance.fuzzing.search.assert_conforms` and ``kfac-conformance fuzz``.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from kfac_conformance.cases.canonical import ESCHENHAGEN, TUTORIAL, Case

POOLINGS = ("none", "sum", "mean")


@st.composite
def deep_linear_cases(
    draw,
    max_depth: int = 3,
    max_width: int = 4,
    max_shared_axes: int = 2,
    max_axis_size: int = 3,
    max_data: int = 4,
    max_batches: int = 3,
    reductions: tuple[str, ...] = ("mean", "sum"),
) -> Case:
    """A deep linear network with MSE and its exactness map for type-2 expand and reduce.

    Drawn: depth, widths (1 included; a layer is square with probability about one half),
    bias per layer, zero to ``max_shared_axes`` shared axes of sizes 1 to ``max_axis_size``,
    where the shared axes are pooled (not at all, or by a sum or mean after any number of
    layers), data per batch, number of batches, reduction and seed. Everything shrinks
    towards the smallest network: one layer, width one, no shared axes, one datum.
    """
    depth = draw(st.integers(1, max_depth), label="depth")
    widths = [draw(st.integers(1, max_width), label="input width")]
    for _ in range(depth):
        square = draw(st.booleans(), label="square layer")
        widths.append(widths[-1] if square else draw(st.integers(1, max_width), label="width"))
    biases = draw(st.lists(st.booleans(), min_size=depth, max_size=depth), label="biases")
    axes = draw(
        st.lists(st.integers(1, max_axis_size), max_size=max_shared_axes), label="shared axes"
    )
    pooling, pool_after = "none", depth
    if axes:
        pooling = draw(st.sampled_from(POOLINGS), label="pooling")
        if pooling != "none":
            pool_after = draw(st.integers(0, depth), label="pool after layer")
    data = draw(st.integers(1, max_data), label="data per batch")
    batches = draw(st.integers(1, max_batches), label="batches")
    reduction = draw(st.sampled_from(reductions), label="reduction")
    seed = draw(st.integers(0, 2**16 - 1), label="seed")

    architecture: list = []
    for index in range(depth):
        if index == pool_after and pooling != "none":
            architecture.append([pooling, list(range(1, len(axes) + 1))])
        architecture.append(["linear", widths[index], widths[index + 1], biases[index]])
    if pool_after == depth and pooling != "none":
        architecture.append([pooling, list(range(1, len(axes) + 1))])
    shared = math.prod(axes) > 1
    name = (
        f"hypothesis-deep-linear[{'x'.join(map(str, widths))}"
        f"-bias{''.join(str(int(b)) for b in biases)}-axes{list(axes)}-{pooling}"
        f"{f'@{pool_after}' if pooling != 'none' else ''}-{data}x{batches}-{reduction}-seed{seed}]"
    )
    return Case(
        id=name,
        architecture=architecture,
        input_shape=(data, *axes, widths[0]),
        loss="mse",
        reduction=reduction,
        num_batches=batches,
        seed=seed,
        exact=exact_map(architecture, shared, pooling),
        per_position=bool(axes) and pooling == "none",
        statement=_statement(shared, pooling),
        source=ESCHENHAGEN if shared else TUTORIAL,
    )


def exact_map(architecture: list, shared: bool, pooling: str) -> dict[str, tuple[str, ...]]:
    """``{"type-2/expand": layers, "type-2/reduce": layers}`` of a deep linear MSE network
    (empty entries left out); ``shared`` says whether some shared axis has size above one."""
    layers = tuple(str(i) for i, spec in enumerate(architecture) if spec[0] == "linear")
    if not shared:
        return {"type-2/expand": layers, "type-2/reduce": layers}
    if pooling == "none":
        return {"type-2/expand": layers}
    pool = next(i for i, spec in enumerate(architecture) if spec[0] in ("sum", "mean"))
    after = tuple(layer for layer in layers if int(layer) > pool)
    exact = {"type-2/reduce": layers}
    if after:
        exact["type-2/expand"] = after
    return exact


def _statement(shared: bool, pooling: str) -> str:
    if not shared:
        return "deep linear network with MSE: KFAC type-2 is the GGN block on a whole data set"
    if pooling == "none":
        return "deep linear network with MSE on every shared position: KFAC-expand is exact"
    return (
        f"deep linear network, shared axes {pooling}-pooled: KFAC-reduce is exact, and "
        "KFAC-expand after the pooling"
    )


def network_size(case: Case) -> dict[str, object]:
    """What a shrunk case is judged by: depth, widths, shared axes, data and batches."""
    linear = [spec for spec in case.architecture if spec[0] == "linear"]
    return {
        "depth": len(linear),
        "widths": [linear[0][1], *(spec[2] for spec in linear)],
        "biases": [spec[3] for spec in linear],
        "shared_axes": list(case.input_shape[1:-1]),
        "data_per_batch": case.input_shape[0],
        "batches": case.num_batches,
    }


def reproduction(case: Case) -> str:
    """Python lines that rebuild the case and its problem."""
    return (
        "from kfac_conformance.cases.canonical import Case\n"
        f"case = {case!r}\n"
        "problem = case.make_problem()  # float64"
    )


__all__ = ["deep_linear_cases", "exact_map", "network_size", "reproduction"]
