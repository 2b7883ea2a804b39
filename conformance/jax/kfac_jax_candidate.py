r"""kfac-jax (DeepMind's KFAC for JAX) as a JAX candidate: its curvature estimator's factors.

How kfac-jax is asked (kfac-jax 0.0.8, ``kfac_jax/_src``):

- the loss function registers the predictive distribution of the case's loss:
  ``register_squared_error_loss`` (MSE; a normal of variance ½, i.e. the criterion
  :math:`\|f - y\|^2`, ``loss_functions.register_squared_error_loss``),
  ``register_softmax_cross_entropy_loss`` (CE, the class axis moved last) or
  ``register_sigmoid_cross_entropy_loss`` (BCE-with-logits); layers are found by kfac-jax's
  graph matcher (``auto_register_tags``, dense and conv2d tags);
- ``BlockDiagonalCurvature.update_curvature_matrix_estimate`` (jitted) once per batch with
  ``estimation_mode`` ``ggn_exact`` (type-2), ``fisher_gradients`` (MC, ``num_samples`` the
  request's samples, the seed through the ``rng`` key) or ``fisher_empirical`` (empirical),
  ``batch_size`` the batch's size and the moving-average
  weights ``ema_old = n/(n + M)``, ``ema_new = M/(n + M)`` after ``n`` data, so that the state
  holds the mean over all data of every factor;
- a layer's block is ``block.scale(state, False) * kron(factors[0], factors[1])``
  (``curvature_block.CurvatureBlock.to_dense_matrix``): ``factors[0]`` over the inputs (a
  dense layer's ones last; a convolution's patches in ``(kh, kw, c_in)`` order), ``factors[1]``
  over the outputs, and the scale ``1`` for dense, ``1/average_repeats`` for dense layers on
  inputs with extra axes (``RepeatedDenseKroneckerFactored``) and the number of output
  locations for convolutions (``Conv2DTwoKroneckerFactored.fixed_scale``);
- across devices (``compute_on_devices``), as kfac-jax's optimizer runs it: the same update
  ``pmap``-ed over the axis :data:`DEVICE_AXIS` (kfac-jax's ``pmap_axis_name``), each device
  on its shard of every batch with ``batch_size`` its shard's size, then
  ``estimator.sync(state, pmap_axis_name)``, which averages every factor over the devices.

Every factor is divided by the batch size (``DenseTwoKroneckerFactored``'s
``jnp.einsum("ay,az->yz", x, x) / batch_size``, likewise ``dy``), and the registered losses
ignore the case's reduction (they assume "summed over non-batch axes, averaged over the
batch"). Declared: ``Conventions(curvature="mean-squared-error",
empirical_fisher="mean-squared-error")``, i.e. :math:`\frac1N\sum_n` of the per-datum
curvature of :math:`\|f-y\|^2` (MSE) or of the negative log-likelihood (CE, BCE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np

from kfac_conformance.contract.conventions import Conventions
from kfac_conformance.jax import kinds, network
from kfac_conformance.jax.devices import too_few
from kfac_conformance.neutral.candidate import Refused, Unavailable
from kfac_conformance.neutral.factors import Factors
from kfac_conformance.neutral.fixtures import StoredCase

jax.config.update("jax_enable_x64", True)

ESTIMATION_MODES = {
    "type-2": "ggn_exact",
    "mc": "fisher_gradients",
    "empirical": "fisher_empirical",
}
KRONECKER_BLOCKS = (
    kfac_jax.DenseTwoKroneckerFactored,
    kfac_jax.RepeatedDenseKroneckerFactored,
    kfac_jax.Conv2DTwoKroneckerFactored,
)
# the pmap axis the devices share: kfac-jax's `pmap_axis_name`
DEVICE_AXIS = "devices"


def host_devices(world: int) -> list:
    """The first ``world`` CPU devices (:mod:`kfac_conformance.jax.devices` asks for them)."""
    devices = jax.devices("cpu")
    if len(devices) < world:
        raise Unavailable(too_few(len(devices), world))
    return devices[:world]


def register_loss(loss: str, output: jax.Array, targets: jax.Array) -> jax.Array:
    """Register the case's loss with kfac-jax; return its value as kfac-jax reads it."""
    if loss == "mse":
        kfac_jax.register_squared_error_loss(output, targets)
        return jnp.sum((output - targets) ** 2) / output.shape[0]
    if loss == "ce":
        logits = jnp.moveaxis(output, 1, -1)  # PyTorch's class axis is 1, kfac-jax's the last
        kfac_jax.register_softmax_cross_entropy_loss(logits, targets)
        log_p = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(log_p, targets[..., None], axis=-1)
        return -jnp.sum(picked) / output.shape[0]
    if loss == "bce":
        kfac_jax.register_sigmoid_cross_entropy_loss(output, targets)
        nll = jnp.logaddexp(0.0, output) - targets * output
        return jnp.sum(nll) / output.shape[0]
    raise ValueError(f"unknown loss {loss!r}; expected 'mse', 'ce' or 'bce'")


def _torch_patch_order(kernel_h: int, kernel_w: int, channels: int) -> np.ndarray:
    """Index into kfac-jax's ``(kh, kw, c_in)`` patch order for each ``(c_in, kh, kw)`` entry."""
    c, h, w = np.meshgrid(
        np.arange(channels), np.arange(kernel_h), np.arange(kernel_w), indexing="ij"
    )
    return ((h * kernel_w + w) * channels + c).ravel()


def to_suite_layout(spec: list, A: np.ndarray, G: np.ndarray, scale: float, bias: bool) -> Factors:
    """kfac-jax's ``scale * kron(A, G)`` over ``[w; b]`` (JAX layout) as the suite's factors.

    With ``W = w^T`` (dense) the row-major ``[W | b]`` block is ``kron(G, A)``; a convolution's
    patches are reordered from ``(kh, kw, c_in)`` to PyTorch's ``(c_in, kh, kw)``.
    """
    if spec[0] == "conv2d":
        c_in, kernel = spec[1], spec[3]
        order = _torch_patch_order(kernel, kernel, c_in)
        if bias:
            order = np.append(order, A.shape[0] - 1)
        A = A[np.ix_(order, order)]
    return Factors(A=A, B=scale * G, bias="joint" if bias else "none")


@dataclass
class _Estimation:
    """kfac-jax's estimator for one case and one number of MC samples, its initial state and
    one compiled update per (estimation mode, batch size)."""

    estimator: kfac_jax.BlockDiagonalCurvature
    params: network.Params
    batches: list[tuple[jax.Array, jax.Array]]
    initial: object
    updates: dict = field(default_factory=dict)
    device_runs: dict = field(default_factory=dict)

    def update(self, mode: str, size: int):
        if (mode, size) not in self.updates:

            def update(state, rng, batch, ema_old, ema_new):
                return self.estimator.update_curvature_matrix_estimate(
                    state,
                    ema_old=ema_old,
                    ema_new=ema_new,
                    identity_weight=0.0,
                    batch_size=size,
                    rng=rng,
                    func_args=(self.params, batch),
                    estimation_mode=mode,
                )

            self.updates[mode, size] = jax.jit(update)
        return self.updates[mode, size]

    def run(self, mode: str, seed: int):
        """The state after every batch, weighted so that it holds the mean over all data."""
        state, seen = self.initial, 0
        for index, batch in enumerate(self.batches):
            size = batch[0].shape[0]
            rng = jax.random.fold_in(jax.random.PRNGKey(seed), index)
            state = self.update(mode, size)(
                state, rng, batch, seen / (seen + size), size / (seen + size)
            )
            seen += size
        return state

    def run_on_devices(self, mode: str, shards: list, devices: list, combine: Callable):
        """Each device's state after every batch of its shard (weighted by the data of all the
        devices, as :meth:`run`), then ``combine(estimator, state)`` inside the ``pmap``; the
        states stacked along a leading device axis. ``shards[d]``: device ``d``'s batches."""
        world, sizes = len(devices), tuple(X.shape[0] for X, _ in shards[0])
        if (mode, world, sizes) not in self.device_runs:

            def on_device(state, batches):
                seen = 0
                for index, (batch, size) in enumerate(zip(batches, sizes, strict=True)):
                    total = world * size
                    rng = jax.random.PRNGKey(index)
                    update = self.update(mode, size)
                    state = update(state, rng, batch, seen / (seen + total), total / (seen + total))
                    seen += total
                return combine(self.estimator, state)

            run = jax.pmap(on_device, axis_name=DEVICE_AXIS, in_axes=(None, 0), devices=devices)
            self.device_runs[mode, world, sizes] = run
        stacked = [
            tuple(
                jnp.stack([jnp.asarray(batches[index][part]) for batches in shards])
                for part in (0, 1)
            )
            for index in range(len(sizes))
        ]
        return self.device_runs[mode, world, sizes](self.initial, stacked)


class KfacJaxCandidate:
    name = "kfac-jax"
    framework = "jax"
    dtype = "float64"
    conventions = Conventions(curvature="mean-squared-error", empirical_fisher="mean-squared-error")

    def __init__(self) -> None:
        try:
            self.version = version("kfac-jax")
        except PackageNotFoundError:
            self.version = None
        self._estimations: dict[tuple[str, int], _Estimation] = {}

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        unbuildable = kinds.unsupported(case.architecture)
        if unbuildable is not None:
            return unbuildable
        if fisher_type not in ESTIMATION_MODES:
            return f"kfac-jax has no estimation mode for fisher type {fisher_type!r}"
        if flavour == "reduce" and _has_shared_axes(case):
            return (
                "kfac-jax has no KFAC-reduce: it treats the shared axes of dense layers "
                "(RepeatedDenseKroneckerFactored) and convolutions as extra data (expand)"
            )
        return None

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> dict[str, Factors]:
        reason = self.refusal(case, fisher_type, flavour)
        if reason is not None:
            raise Refused(reason)
        # expand and (without shared axes) reduce are one computation; only MC uses the samples
        samples = mc_samples if fisher_type == "mc" else 1
        estimation = self._estimation(case, samples)
        state = estimation.run(ESTIMATION_MODES[fisher_type], seed)
        return self._factors(case, estimation.estimator, state)

    def compute_on_devices(
        self, shards: Sequence[StoredCase], fisher_type: str, flavour: str
    ) -> list[dict[str, Factors]]:
        """Each of ``len(shards)`` CPU devices' factors after the data-parallel run."""
        case = shards[0]
        reason = self.refusal(case, fisher_type, flavour)
        if reason is not None:
            raise Refused(reason)
        devices = host_devices(len(shards))
        estimation = self._estimation(case, 1)
        batches = [shard.batches for shard in shards]
        mode = ESTIMATION_MODES[fisher_type]
        states = estimation.run_on_devices(mode, batches, devices, self.combined)
        return [
            self._factors(
                case, estimation.estimator, jax.tree.map(lambda leaf, d=d: leaf[d], states)
            )
            for d in range(len(shards))
        ]

    def combined(self, estimator: kfac_jax.BlockDiagonalCurvature, state):
        """The devices' states combined as kfac-jax's optimizer combines them (``sync``: the
        mean of every factor over :data:`DEVICE_AXIS`); called inside the ``pmap``."""
        return estimator.sync(state, pmap_axis_name=DEVICE_AXIS)

    def _estimation(self, case: StoredCase, mc_samples: int) -> _Estimation:
        key = (case.id, mc_samples)
        if key not in self._estimations:
            apply = network.build(case.architecture)

            def loss_function(params, batch):
                X, y = batch
                return register_loss(case.loss, apply(params, X), y)

            estimator = kfac_jax.BlockDiagonalCurvature(func=loss_function, num_samples=mc_samples)
            params = network.jax_params(case)
            batches = [(jnp.asarray(X), jnp.asarray(y)) for X, y in case.batches]
            initial = estimator.init(
                jax.random.PRNGKey(0),
                (params, batches[0]),
                exact_powers_to_cache=None,
                approx_powers_to_cache=None,
            )
            self._estimations[key] = _Estimation(estimator, params, batches, initial)
        return self._estimations[key]

    def _factors(self, case: StoredCase, estimator, state) -> dict[str, Factors]:
        result = {}
        for layer in case.layers:
            spec = case.architecture[int(layer)]
            index = estimator.params_block_index[layer]["w"]
            block, block_state = estimator.blocks[index], state.blocks_states[index]
            if not isinstance(block, KRONECKER_BLOCKS):
                raise Refused(
                    f"kfac-jax's graph matcher gave layer {layer!r} ({spec[0]}) the block "
                    f"{type(block).__name__}, not a Kronecker-factored one"
                )
            A, G = (np.asarray(factor.value, dtype=np.float64) for factor in block_state.factors)
            scale = float(block.scale(block_state, False))
            bias = case.parameter(layer, "bias") is not None
            result[layer] = to_suite_layout(spec, A, G, scale, bias)
        return result


def _has_shared_axes(case: StoredCase) -> bool:
    """A convolution, or a dense layer whose inputs have more axes than ``(N, D)``."""
    if any(spec[0] == "conv2d" for spec in case.architecture):
        return True
    params = network.jax_params(case)
    X = jnp.asarray(case.batches[0][0])
    for index, spec in enumerate(case.architecture):
        if spec[0] == "linear" and X.ndim > 2:
            return True
        X = network.layer_function(spec, str(index))(params, X)
    return False
