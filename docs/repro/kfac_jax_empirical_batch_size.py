"""kfac-jax 0.0.8: ``fisher_empirical`` divides the gradients' second moments by the batch size
twice, so its empirical Fisher depends on how the data are batched.

Needs only JAX and kfac-jax (jax==0.9.1, kfac-jax==0.0.8): python docs/repro/kfac_jax_empirical_batch_size.py

For one dense layer on data that share one input x (only the targets differ), the empirical
KFAC equals the empirical Fisher exactly: (1/N) sum_n g_n g_n^T with g_n the gradient of datum
n's squared error, in kfac-jax's own per-datum-mean normalisation (the one its type-2 and MC
modes follow). ``BlockDiagonalCurvature.update_curvature_matrix_estimate`` divides the loss
tangents of ``fisher_empirical`` by sqrt(batch_size) on top of the blocks' division by the
batch size (its comment: "normalization of the 2nd-order statistics by the batch size" twice),
so the block is 1/N of that on a batch of N.
"""

import json

import jax
import jax.numpy as jnp
import kfac_jax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

D_IN, D_OUT = 3, 2
key_x, key_y, key_w = jax.random.split(jax.random.PRNGKey(0), 3)
x = jax.random.normal(key_x, (1, D_IN))
params = {"w": jax.random.normal(key_w, (D_IN, D_OUT))}


def loss(p, batch):
    X, Y = batch
    f = X @ p["w"]
    kfac_jax.register_squared_error_loss(f, Y)
    return jnp.sum((f - Y) ** 2) / X.shape[0]


def ratio(N: int) -> float:
    X = jnp.repeat(x, N, axis=0)
    Y = jax.random.normal(key_y, (N, D_OUT))
    estimator = kfac_jax.BlockDiagonalCurvature(func=loss)
    rng = jax.random.PRNGKey(1)
    state = estimator.init(rng, (params, (X, Y)), None, None)
    state = estimator.update_curvature_matrix_estimate(
        state,
        ema_old=0.0,
        ema_new=1.0,
        identity_weight=0.0,
        batch_size=N,
        rng=rng,
        func_args=(params, (X, Y)),
        estimation_mode="fisher_empirical",
    )
    kfac = estimator.to_diagonal_block_dense_matrix(state)[0]
    flat, unravel = ravel_pytree(params)
    per_datum = jax.vmap(
        lambda X1, Y1: jax.grad(lambda v: jnp.sum((X1 @ unravel(v)["w"] - Y1) ** 2))(flat)
    )(X, Y)
    expected = per_datum.T @ per_datum / N
    return float(jnp.sum(kfac * expected) / jnp.sum(expected * expected))


ratios = {}
for N in (1, 2, 4):
    ratios[f"batch_{N}"] = ratio(N)
    print(
        f"batch of {N}: kfac-jax empirical KFAC / (1/N) sum_n g_n g_n^T = {ratios[f'batch_{N}']:.6g}"
    )
# observed: 1, 0.5, 0.25 (1/N)
print(json.dumps(ratios))
