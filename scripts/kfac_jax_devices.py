"""kfac-jax across W host devices, as its users run it: the curvature update ``pmap``-ed over
the axis ``"devices"`` with an equal shard of the data per device, then ``estimator.sync``
(kfac-jax averages the devices' factors with ``pmean``), against one device on all the data.

Run in an environment with the ``jax`` extra (no torch needed)::

    python scripts/kfac_jax_devices.py 4

It prints, per estimation mode, the worst relative Frobenius error of any factor on any device
against one device, and the factor that best maps one onto the other; docs/distributed.md
records the output. ``pmap`` needs equal shapes, so kfac-jax has no unequal shards to test.
"""

from __future__ import annotations

import os
import sys

WORLD = int(sys.argv[1]) if len(sys.argv) > 1 else 2
# before JAX starts its backend: W CPU devices in this process
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={WORLD}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import kfac_jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
NUM_DATA, D_IN, D_HIDDEN, CLASSES = 12, 5, 4, 3
MODES = ("ggn_exact", "fisher_empirical")


def problem() -> tuple[dict, tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    params = {
        "w1": jax.random.normal(keys[0], (D_IN, D_HIDDEN)),
        "b1": jax.random.normal(keys[1], (D_HIDDEN,)),
        "w2": jax.random.normal(keys[2], (D_HIDDEN, CLASSES)),
        "b2": jax.random.normal(keys[3], (CLASSES,)),
    }
    X = jax.random.normal(keys[4], (NUM_DATA, D_IN))
    y = jax.random.randint(keys[5], (NUM_DATA,), 0, CLASSES)
    return params, (X, y)


def loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    X, y = batch
    logits = jnp.tanh(X @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    kfac_jax.register_softmax_cross_entropy_loss(logits, y)
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)
    return -jnp.mean(picked)


def main() -> None:
    params, (X, y) = problem()
    estimator = kfac_jax.BlockDiagonalCurvature(func=loss)
    initial = estimator.init(
        jax.random.PRNGKey(0),
        (params, (X, y)),
        exact_powers_to_cache=None,
        approx_powers_to_cache=None,
    )
    shard = NUM_DATA // WORLD

    def update(state, batch, size: int, mode: str):
        return estimator.update_curvature_matrix_estimate(
            state,
            ema_old=0.0,
            ema_new=1.0,
            identity_weight=0.0,
            batch_size=size,
            rng=jax.random.PRNGKey(1),
            func_args=(params, batch),
            estimation_mode=mode,
        )

    def factors(state) -> list[np.ndarray]:
        return [np.asarray(f.value) for block in state.blocks_states for f in block.factors]

    for mode in MODES:
        one = factors(
            jax.jit(lambda state, batch, mode=mode: update(state, batch, NUM_DATA, mode))(
                initial, (X, y)
            )
        )

        def per_device(state, batch, mode=mode):
            return estimator.sync(update(state, batch, shard, mode), pmap_axis_name="devices")

        sharded = (X.reshape(WORLD, shard, D_IN), y.reshape(WORLD, shard))
        states = jax.pmap(per_device, axis_name="devices", in_axes=(None, 0))(initial, sharded)
        worst, ratios = 0.0, []
        for device in range(WORLD):
            many = factors(jax.tree_util.tree_map(lambda leaf, d=device: leaf[d], states))
            for got, want in zip(many, one, strict=True):
                worst = max(worst, float(np.linalg.norm(got - want) / np.linalg.norm(want)))
                ratios.append(float((got * want).sum() / (want * want).sum()))
        print(
            f"W={WORLD} ({len(jax.devices())} devices) {mode}: worst relative error of any "
            f"factor on any device against one device {worst:.2e}; fitted factor per factor "
            f"from {min(ratios):.6g} to {max(ratios):.6g}"
        )


if __name__ == "__main__":
    main()
