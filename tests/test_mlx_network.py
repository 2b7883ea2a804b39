"""The MLX network builder, layer by layer, against numpy: every parameter layer of every stored
case, fed the input the built network gives it, computes what PyTorch's layer computes from
the stored parameters (in PyTorch's layout, channels first), to float32 precision.

Skips without the optional extra ``mlx`` (``nox -s tests_mlx`` runs it, without torch).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip(
    "mlx.core", reason="the MLX builder needs the extra 'mlx' (nox -s tests_mlx)"
)

from kfac_conformance.mlx import network  # noqa: E402
from kfac_conformance.neutral import fixtures  # noqa: E402
from kfac_conformance.neutral.comparison import relative_error, tolerance  # noqa: E402

FLOAT32_TOLERANCE = tolerance("float32")


def numpy_convolution(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: int,
    padding: int,
    dilation: int,
) -> np.ndarray:
    """PyTorch's ``conv{1,2,3}d`` on channels-first ``x`` with an ``(out, in, k...)`` kernel:
    the sum over the kernel's taps of each tap's strided, dilated window times its weights."""
    spatial = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(padding, padding)] * spatial)
    kernel = weight.shape[2:]
    out = [
        (n - dilation * (k - 1) - 1) // stride + 1 for n, k in zip(x.shape[2:], kernel, strict=True)
    ]
    y = np.zeros((x.shape[0], weight.shape[0], *out))
    for tap in np.ndindex(*kernel):
        window = tuple(
            slice(t * dilation, t * dilation + (m - 1) * stride + 1, stride)
            for t, m in zip(tap, out, strict=True)
        )
        y += np.einsum(
            "nc...,oc->no...",
            x[(slice(None), slice(None), *window)],
            weight[(slice(None), slice(None), *tap)],
        )
    return y if bias is None else y + bias.reshape(-1, *[1] * spatial)


def numpy_layer(spec: list, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None):
    """What PyTorch's layer of ``spec`` computes on ``x`` with the stored parameters."""
    if spec[0] == "embedding":
        return weight[x]
    if spec[0] == "linear":
        return x @ weight.T + (0.0 if bias is None else bias)
    _, _, _, _, stride, padding, dilation, _ = spec
    return numpy_convolution(x, weight, bias, stride, padding, dilation)


@pytest.mark.parametrize("case_id", fixtures.case_ids())
def test_every_built_parameter_layer_computes_the_pytorch_layer(case_id: str):
    case = fixtures.load(case_id)
    model = network.build(case)
    x = network.as_mlx(case.batches[0][0])
    for index, (spec, layer) in enumerate(zip(case.architecture, model.layers, strict=True)):
        output = layer(x)
        if spec[0] in network.PARAMETRIC:
            weight = case.parameter(str(index), "weight")
            bias = case.parameter(str(index), "bias")
            expected = numpy_layer(spec, np.array(x), weight, bias)
            assert output.shape == expected.shape, (index, spec)
            error = relative_error(np.array(output, dtype=np.float64), expected)
            assert error <= FLOAT32_TOLERANCE, (index, spec, error)
        x = output


@pytest.mark.parametrize("kind", sorted(network.CONVOLUTIONS))
def test_numpy_convolution_is_a_convolution(kind: str):
    """The numpy reference itself, on a case it can get wrong only by its indexing: one input
    channel, one output channel, a one-hot kernel picks the input shifted by its tap (times the
    dilation), then strided; checked against slicing by hand."""
    spatial = network.SPATIAL_AXES[kind]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 1) + (7,) * spatial)
    weight = np.zeros((1, 1) + (3,) * spatial)
    weight[(0, 0) + (2,) * spatial] = 1.0  # the last tap
    y = numpy_convolution(x, weight, None, stride=2, padding=0, dilation=2)
    # the last tap reads from offset 2 * 2 = 4; output length (7 - 2 * 2 - 1) // 2 + 1 = 2
    expected = x[(slice(None), slice(None)) + (slice(4, 7, 2),) * spatial]
    np.testing.assert_array_equal(y, expected)
