"""kfac-jax 0.0.8: ggn_exact gives a wrong block for a dense layer with a bias applied to inputs
with extra axes (N, S, D) -- a RepeatedDenseKroneckerFactored block.

Needs only JAX and kfac-jax (jax==0.9.1, kfac-jax==0.0.8): python docs/repro/kfac_jax_repeated_dense_bias.py

For one dense layer and the squared-error loss the GGN is Kronecker-factored, so KFAC
(expand) must equal it exactly: G = (1/N) sum_n J_n^T (2 I) J_n in kfac-jax's own normalisation.
With ``ggn_exact`` kfac-jax masks the positions whose output tangent is zero
(``RepeatedDenseKroneckerFactored``, ``use_masking``): it zeroes those rows of the input but
appends the ones column for the bias after masking, so the bias entries of the input factor
count every position in every one-hot pass. Without a bias the same layer is exact.

The same holds in every estimation mode for padded sequences, where the output tangent is
exactly zero on the padding: the weight entries of the input factor exclude the padded
positions, the bias entries count them. Padding every sequence of a batch by the same
number of positions must leave the factors unchanged; the bias entries change.
"""

import json

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


numbers = {}
for with_bias in (False, True):
    numbers[f"ggn_exact_bias_{with_bias}"] = block_error(with_bias, "ggn_exact")
    print(
        f"bias={with_bias!s:5}  ggn_exact: relative error {numbers[f'ggn_exact_bias_{with_bias}']:.2e}"
    )
# observed: bias=False 1e-16-ish (exact); bias=True O(1) (wrong)

PADDING = 2  # positions appended to every sequence, with zero inputs and a zero loss weight


def factors(padding: int, mode: str):
    """The input factor and the dense block of the layer, with ``padding`` positions appended."""
    params = {"w": jax.random.normal(key_w, (D_IN, D_OUT)), "b": jax.random.normal(key_b, (D_OUT,))}
    x = jnp.concatenate([X, jnp.zeros((N, padding, D_IN))], axis=1)
    y = jnp.concatenate([Y, jnp.zeros((N, padding, D_OUT))], axis=1)
    mask = jnp.concatenate([jnp.ones((N, S, 1)), jnp.zeros((N, padding, 1))], axis=1)

    def loss(p, batch):
        x, y = batch
        f = (x @ p["w"] + p["b"]) * mask  # the output tangent is exactly zero on the padding
        kfac_jax.register_squared_error_loss(f, y)
        return jnp.sum((f - y) ** 2) / N

    estimator = kfac_jax.BlockDiagonalCurvature(func=loss)
    rng = jax.random.PRNGKey(1)
    state = estimator.init(rng, (params, (x, y)), None, None)
    state = estimator.update_curvature_matrix_estimate(
        state, ema_old=0.0, ema_new=1.0, identity_weight=0.0, batch_size=N, rng=rng,
        func_args=(params, (x, y)), estimation_mode=mode,
    )  # fmt: skip
    A = state.blocks_states[0].factors[0].value  # the ones row and column (bias) last
    return A, estimator.to_diagonal_block_dense_matrix(state)[0]


def difference(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


for mode in ("ggn_exact", "fisher_empirical", "ggn_curvature_prop", "fisher_gradients"):
    (A, block), (A_padded, block_padded) = factors(0, mode), factors(PADDING, mode)
    numbers[f"padded_{mode}_A_weight"] = difference(A_padded[:-1, :-1], A[:-1, :-1])
    numbers[f"padded_{mode}_A_bias"] = difference(A_padded[-1], A[-1])
    print(
        f"padded by {PADDING}, {mode:18}: input factor vs unpadded: relative difference of the "
        f"weight entries {numbers[f'padded_{mode}_A_weight']:.2e}, of the bias entries "
        f"{numbers[f'padded_{mode}_A_bias']:.3g}"
    )
    if mode in ("ggn_exact", "fisher_empirical"):  # deterministic: the whole block compares
        numbers[f"padded_{mode}_block"] = difference(block_padded, block)
        print(f"padded by {PADDING}, {mode:18}: block vs unpadded: relative difference "
              f"{numbers[f'padded_{mode}_block']:.3g}")  # fmt: skip
print(json.dumps(numbers))
