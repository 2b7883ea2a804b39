r"""mlx-kfac (a native MLX K-FAC optimizer) as an MLX candidate: its optimizer state's factors.

How mlx-kfac is asked (mlx-kfac 0.4.0, ``mlx_kfac/optimizer.py`` and ``capture.py``):

- ``KFAC(model=network, loss_reduction="sum", max_factor_size=None)`` instruments the
  network's ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and (``include_embeddings``, on by
  default) ``nn.Embedding`` modules (an identity with a custom VJP records each module's input
  and output cotangent); ``max_factor_size=None`` keeps every factor whole;
- per batch, ``nn.value_and_grad`` of the case's loss *summed* over the batch (:func:`loss`),
  then ``apply_gradients``, whose parameter updates are discarded (the network never changes);
  the factors come from the recorded inputs and cotangents, not from the gradients passed;
- the state of a linear layer or convolution holds ``A`` (mean over the batch's rows
  ``N x positions`` of the input with a one appended when the layer has a bias; a
  convolution's patches in MLX's ``(k..., c_in)`` order, every output position a row), ``G``
  (the same mean of the output cotangents) and ``curvature_scale`` (rows per datum), and its
  curvature is ``curvature_scale * kron(G, A)`` over the row-major ``[W | b]``
  (``KFAC._precondition`` divides by the scale after solving with ``G`` and ``A``);
- an embedding's state holds ``A_diag``, the counts of each index over the rows
  ``N x positions`` divided by their number (the diagonal of the one-hot inputs' mean outer
  product, never formed), ``G`` and ``curvature_scale`` as above, and its curvature is
  ``curvature_scale * kron(diag(A_diag), G)`` over the row-major ``num_embeddings x dim``
  weight (the one-hot factor on the left: the weight is the transpose of a linear layer's);
- ``factor_decay`` is set to ``n / (n + M)`` before a batch of ``M`` data after ``n``, so that
  the moving average holds the mean over all data (the first batch replaces the identity the
  state starts from).

The cotangents are those of the loss given: KFAC-expand of the empirical Fisher, and nothing
else (no MC labels, no type-2, no KFAC-reduce). With the per-datum criterion summed,
:math:`c' = \|f - y\|^2` for MSE and the negative log-likelihood for CE and BCE, the block is
:math:`\frac1N\sum_n` of KFAC over :math:`\nabla c'_n`: declared
``Conventions(empirical_fisher="mean-squared-error")``. ``loss_reduction="mean"`` multiplies the
cotangents by the batch size only, which undoes a mean over the batch but not over a loss's
other axes (``nn.MSELoss``'s mean over every element), so the sum is the mode that fits
every case.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_kfac import KFAC

# mlx-kfac keys its per-layer state by this encoding of the module path (a private helper)
from mlx_kfac.optimizer import _state_key

from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.mlx import network
from kfac_conformance.neutral.candidate import Refused
from kfac_conformance.neutral.factors import Factors
from kfac_conformance.neutral.fixtures import StoredCase

# the parameter layers whose MLX modules mlx-kfac instruments (``capture.instrument_model``)
INSTRUMENTED = {"linear", "conv1d", "conv2d", "embedding"}


def loss(kind: str, output: mx.array, targets: mx.array) -> mx.array:
    """The case's per-datum criterion summed over the batch: ``||f - y||^2`` (MSE), the
    negative log-likelihood of the softmax over axis 1 (CE) or of the sigmoid (BCE)."""
    if kind == "mse":
        return mx.sum((output - targets) ** 2)
    if kind == "ce":
        log_p = nn.log_softmax(mx.moveaxis(output, 1, -1), axis=-1)
        return -mx.sum(mx.take_along_axis(log_p, targets[..., None], axis=-1))
    if kind == "bce":
        return mx.sum(mx.logaddexp(mx.zeros_like(output), output) - targets * output)
    raise ValueError(f"unknown loss {kind!r}; expected 'mse', 'ce' or 'bce'")


def patch_order(channels: int, kernel: int, spatial_axes: int) -> np.ndarray:
    """For each entry of PyTorch's ``(c_in, k...)`` patch (``spatial_axes`` kernel axes), its
    index in MLX's ``(k..., c_in)`` patch."""
    mlx_patch = np.arange(kernel**spatial_axes * channels).reshape(
        (kernel,) * spatial_axes + (channels,)
    )
    return mlx_patch.transpose(spatial_axes, *range(spatial_axes)).ravel()


def to_suite_layout(spec: list, state: dict[str, np.ndarray], bias: bool) -> Factors:
    """A layer's mlx-kfac state as the suite's factors.

    A linear layer or convolution's curvature is ``curvature_scale * kron(G, A)`` over the
    row-major ``[W | b]``: a convolution's patch is reordered to PyTorch's (the appended one
    stays last). An embedding's is ``curvature_scale * kron(diag(A_diag), G)`` over its
    ``num_embeddings x dim`` weight: the one-hot factor is the suite's ``B``, ``G`` its ``A``.
    """
    scale = float(state["curvature_scale"])
    if spec[0] == "embedding":
        return Factors(A=state["G"], B=scale * np.diag(state["A_diag"]))
    A = state["A"]
    if spec[0] in network.CONVOLUTIONS:
        order = patch_order(spec[1], spec[3], network.SPATIAL_AXES[spec[0]])
        if bias:
            order = np.append(order, A.shape[0] - 1)
        A = A[np.ix_(order, order)]
    return Factors(A=A, B=scale * state["G"], bias="joint" if bias else "none")


class MlxKfacCandidate:
    name = "mlx-kfac"
    framework = "mlx"
    dtype = "float32"
    conventions = Conventions(empirical_fisher="mean-squared-error")

    def __init__(self) -> None:
        try:
            self.version = version("mlx-kfac")
        except PackageNotFoundError:
            self.version = None

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        if fisher_type != "empirical":
            return (
                f"mlx-kfac has no fisher type {fisher_type!r}: its factors are those of the "
                "gradients of the loss it is given (the empirical Fisher)"
            )
        if flavour == "reduce" and case.weight_sharing:
            return (
                "mlx-kfac has no KFAC-reduce: it treats the shared positions as extra data (expand)"
            )
        if reason := network.unsupported(case.architecture):
            return reason
        kinds = {spec[0] for spec in case.architecture if spec[0] in network.PARAMETRIC}
        uninstrumented = sorted(kinds - INSTRUMENTED)
        if uninstrumented:
            return (
                f"mlx-kfac {self.version} instruments no {uninstrumented} layer (its layer "
                "kinds: nn.Linear, nn.Conv1d, nn.Conv2d and nn.Embedding)"
            )
        return None

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> dict[str, Factors]:
        """The empirical KFAC-expand of every layer (no MC: ``mc_samples`` and ``seed`` unused)."""
        if (reason := self.refusal(case, fisher_type, flavour)) is not None:
            raise Refused(reason)
        return self._factors(case, self._optimizer_after_every_batch(case))

    @staticmethod
    def _optimizer_after_every_batch(case: StoredCase) -> KFAC:
        model = network.build(case)
        optimizer = KFAC(model=model, loss_reduction="sum", max_factor_size=None)
        loss_and_grad = nn.value_and_grad(model, lambda X, y: loss(case.loss, model(X), y))
        seen = 0
        for X, y in case.batches:
            size = X.shape[0]
            optimizer.factor_decay = seen / (seen + size)
            _, gradients = loss_and_grad(network.as_mlx(X), network.as_mlx(y))
            optimizer.apply_gradients(gradients, model.trainable_parameters(), model=model)
            seen += size
        return optimizer

    @staticmethod
    def _factors(case: StoredCase, optimizer: KFAC) -> dict[str, Factors]:
        paths = network.module_paths(case.architecture)
        result = {}
        for layer in case.layers:
            state = optimizer.state["layers"][_state_key(paths[layer])]
            arrays = {
                name: np.array(state[name], dtype=np.float64)
                for name in ("A", "A_diag", "G", "curvature_scale")
                if name in state
            }
            bias = case.parameter(layer, "bias") is not None
            result[layer] = to_suite_layout(case.architecture[int(layer)], arrays, bias)
        return result
