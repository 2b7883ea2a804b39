"""kfac-jax 0.0.8: ggn_exact gives a wrong block for a dense layer with a bias applied to inputs
with extra axes (N, S, D) -- a RepeatedDenseKroneckerFactored block.

Needs only JAX and kfac-jax (jax==0.9.1, kfac-jax==0.0.8): python docs/repro/kfac_jax_repeated_dense_bias.py

For one dense layer and the squared-error loss the GGN is Kronecker-factored, so KFAC
(expand) must equal it exactly: G = (1/N) sum_n J_n^T (2 I) J_n in kfac-jax's own normalisation.
With ``ggn_exact`` kfac-jax masks the positions whose output tangent is zero
(``RepeatedDenseKroneckerFactored``, ``use_masking``): it zeroes those rows of the input but
appends the ones column for the bias after masking, so the bias entries of the input factor
count every position in every one-hot pass. Without a bias the same layer is exact.
"""

import jax
import jax.numpy as jnp
import kfac_jax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

N, S, D_IN, D_OUT = 2, 3, 3, 2
key_x, key_y, key_w, key_b = jax.random.split(jax.random.PRNGKey(0), 4)
X = jax.random.normal(key_x, (N, S, D_IN))
Y = jax.random.normal(key_y, (N, S, D_OUT))


def block_error(with_bias: bool, mode: str) -> float:
    params = {"w": jax.random.normal(key_w, (D_IN, D_OUT))}
    if with_bias:
        params["b"] = jax.random.normal(key_b, (D_OUT,))

    def model(p, x):
        y = x @ p["w"]
        return y + p["b"] if with_bias else y

    def loss(p, batch):
        x, y = batch
        f = model(p, x)
        kfac_jax.register_squared_error_loss(f, y)
        return jnp.sum((f - y) ** 2) / x.shape[0]

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
        estimation_mode=mode,
    )
    kfac = estimator.to_diagonal_block_dense_matrix(state)[0]  # ordered as ravel_pytree

    flat, unravel = ravel_pytree(params)
    J = jax.jacobian(lambda v: model(unravel(v), X).reshape(-1))(flat)
    exact = 2.0 * J.T @ J / N
    return float(jnp.linalg.norm(kfac - exact) / jnp.linalg.norm(exact))


for with_bias in (False, True):
    print(
        f"bias={with_bias!s:5}  ggn_exact: relative error {block_error(with_bias, 'ggn_exact'):.2e}"
    )
# observed: bias=False 1e-16-ish (exact); bias=True O(1) (wrong)
