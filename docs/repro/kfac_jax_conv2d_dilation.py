"""kfac-jax 0.0.8: a dilated convolution gets a silently wrong Kronecker block.

Needs only JAX and kfac-jax (jax==0.9.1, kfac-jax==0.0.8): python docs/repro/kfac_jax_conv2d_dilation.py

For one convolution and the squared-error loss the GGN is exactly KFC's (expand) Kronecker
product, so kfac-jax's ``Conv2DTwoKroneckerFactored`` block must equal it. The block computes
its input factor with ``patches_second_moment.patches_moments``, passing the strides and the
padding of the convolution but not its ``rhs_dilation``; ``patches_moments`` would raise on a
kernel dilation other than 1 ("does not support kernel dilation") but is never told, so it
returns the moments of undilated patches.
"""

import json

import jax
import jax.numpy as jnp
import kfac_jax
from jax import lax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

N, C_IN, C_OUT, SIZE, KERNEL = 2, 2, 3, 6, 3
key_x, key_y, key_w, key_b = jax.random.split(jax.random.PRNGKey(0), 4)
X = jax.random.normal(key_x, (N, SIZE, SIZE, C_IN))  # NHWC


def block_error(dilation: int) -> float:
    params = {
        "w": jax.random.normal(key_w, (KERNEL, KERNEL, C_IN, C_OUT)),  # HWIO
        "b": jax.random.normal(key_b, (C_OUT,)),
    }

    def model(p, x):
        y = lax.conv_general_dilated(
            x,
            p["w"],
            window_strides=(2, 2),
            padding=((1, 1), (1, 1)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + p["b"]

    Y = jnp.zeros_like(model(params, X))

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
        estimation_mode="ggn_exact",
    )
    kfac = estimator.to_diagonal_block_dense_matrix(state)[0]  # ordered as ravel_pytree

    flat, unravel = ravel_pytree(params)
    J = jax.jacobian(lambda v: model(unravel(v), X).reshape(-1))(flat)
    exact = 2.0 * J.T @ J / N
    return float(jnp.linalg.norm(kfac - exact) / jnp.linalg.norm(exact))


# stride 2 and padding 1 as in the fixture conv-expand[last-layer-stride2-pad1-dil2]
errors = {}
for dilation in (1, 2):
    errors[f"dilation_{dilation}"] = block_error(dilation)
    print(
        f"rhs_dilation={dilation}  ggn_exact: relative error {errors[f'dilation_{dilation}']:.2e}"
    )
# observed: dilation 1 exact to round-off; dilation 2 O(1) (wrong, no error raised)
print(json.dumps(errors))
