"""kfac-jax: RepeatedDenseKroneckerFactored counts masked positions in the bias entries.

Needs only JAX and kfac-jax (tested with kfac-jax 0.0.8 on jax/jaxlib 0.9.1; 0.0.8 fails on
jax >= 0.9.2 for an unrelated reason):

    python kfac-jax_J1.py

Exits with status 1 while the defect is present, 0 once it is fixed.

A dense layer with a bias applied to inputs with extra axes, (N, S, D), is a
``RepeatedDenseKroneckerFactored`` block. With ``use_masking=True`` (the default),
``update_curvature_matrix_estimate`` treats positions whose output tangent is all zero as
masked: it zeroes those rows of the input and counts only the others in
``average_repeats``. It then appends the ones column for the bias to *every* row, masked or
not, so the bias row and column of the input factor count positions that the weight entries
and ``average_repeats`` exclude. Two consequences:

A. ``ggn_exact`` feeds one-hot output tangents, so in each pass every position but one is
   masked: on unpadded data the block is wrong whenever the layer has a bias (it is exact
   without a bias, or with ``use_masking=False``).
B. Padded sequences (a loss with ``mask=0`` on the padding, so the output tangent is exactly
   zero there): in every estimation mode the input factor differs from the one of the same
   batch with the padding cut off, which must be identical (padding is excluded from the
   loss, and kfac-jax's masking exists to exclude it from the statistics).
"""

import sys

import jax
import jax.numpy as jnp
import kfac_jax
from jax.flatten_util import ravel_pytree

jax.config.update("jax_enable_x64", True)

N, S, D_IN, D_OUT = 2, 4, 3, 3
PADDED = 2  # the last PADDED positions of every sequence are padding in part B
keys = jax.random.split(jax.random.PRNGKey(0), 5)
X = jax.random.normal(keys[0], (N, S, D_IN))
Y_REGRESSION = jax.random.normal(keys[1], (N, S, D_OUT))
LABELS = jax.random.randint(keys[2], (N, S), 0, D_OUT)
WEIGHT = jax.random.normal(keys[3], (D_IN, D_OUT))
BIAS = jax.random.normal(keys[4], (D_OUT,))


def dense(params, x):
    y = x @ params["w"]
    return y + params["b"] if "b" in params else y


def squared_error(params, batch):
    x, y = batch
    f = dense(params, x)
    kfac_jax.register_squared_error_loss(f, y)
    return jnp.sum((f - y) ** 2) / x.shape[0]


def masked_cross_entropy(params, batch):
    x, labels, mask = batch
    logits = dense(params, x)
    kfac_jax.register_softmax_cross_entropy_loss(logits, labels, mask=mask)
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask) / x.shape[0]


def estimate(loss, params, batch, mode, use_masking=True):
    constructors = {}
    if not use_masking:

        def constructors_repeated_dense(layer_tag_eq, **kwargs):
            return kfac_jax.curvature_blocks.RepeatedDenseKroneckerFactored(
                layer_tag_eq, use_masking=False, **kwargs
            )

        constructors["repeated_dense"] = constructors_repeated_dense
    estimator = kfac_jax.BlockDiagonalCurvature(func=loss, layer_tag_to_block_ctor=constructors)
    rng = jax.random.PRNGKey(1)
    state = estimator.init(rng, (params, batch), None, None)
    state = estimator.update_curvature_matrix_estimate(
        state,
        ema_old=0.0,
        ema_new=1.0,
        identity_weight=0.0,
        batch_size=N,
        rng=rng,
        func_args=(params, batch),
        estimation_mode=mode,
    )
    return estimator, state


def relative(observed, expected) -> float:
    return float(jnp.linalg.norm(observed - expected) / jnp.linalg.norm(expected))


failures = []

# --- A: ggn_exact on unpadded data vs the exact GGN of the squared error -------------------
for with_bias, use_masking in ((False, True), (True, True), (True, False)):
    params = {"w": WEIGHT, "b": BIAS} if with_bias else {"w": WEIGHT}
    batch = (X, Y_REGRESSION)
    estimator, state = estimate(squared_error, params, batch, "ggn_exact", use_masking)
    kfac = estimator.to_diagonal_block_dense_matrix(state)[0]  # ordered as ravel_pytree
    flat, unravel = ravel_pytree(params)
    J = jax.jacobian(lambda v, unravel=unravel: dense(unravel(v), X).reshape(-1))(flat)
    exact = 2.0 * J.T @ J / N  # kfac-jax: Gaussian NLL sum((f - y)^2), mean over the batch
    error = relative(kfac, exact)
    print(
        f"A. ggn_exact, bias={with_bias!s:5} use_masking={use_masking!s:5}: block vs exact GGN, "
        f"relative error: expected < 1e-10, observed {error:.2e}"
    )
    if error > 1e-10:
        failures.append(f"A bias={with_bias} use_masking={use_masking}")

# --- B: padded sequences: input factor vs the same batch with the padding cut off --------
mask = jnp.ones((N, S)).at[:, S - PADDED :].set(0.0)
padded_batch = (X, LABELS, mask)
cut_batch = (X[:, : S - PADDED], LABELS[:, : S - PADDED], mask[:, : S - PADDED])
params = {"w": WEIGHT, "b": BIAS}
DETERMINISTIC = ("fisher_empirical", "ggn_exact")  # the whole block is comparable there
for mode in ("fisher_empirical", "fisher_gradients", "ggn_curvature_prop", "ggn_exact"):
    estimator, padded = estimate(masked_cross_entropy, params, padded_batch, mode)
    _, cut = estimate(masked_cross_entropy, params, cut_batch, mode)
    a_padded = padded.blocks_states[0].factors[0].value  # input factor, ones column last
    a_cut = cut.blocks_states[0].factors[0].value
    if mode in DETERMINISTIC:
        what = "block"
        error = relative(
            estimator.to_diagonal_block_dense_matrix(padded)[0],
            estimator.to_diagonal_block_dense_matrix(cut)[0],
        )
    else:  # the output factor depends on random draws of different shapes
        what = "input factor"
        error = relative(a_padded, a_cut)
    print(
        f"B. {mode:18s}: {what}, padded vs padding cut off, relative difference: "
        f"expected < 1e-10, observed {error:.3f} (bias entry of the input factor "
        f"{float(a_padded[-1, -1]):.3f} vs {float(a_cut[-1, -1]):.3f})"
    )
    if error > 1e-10:
        failures.append(f"B {mode}")

if failures:
    print(f"DEFECT PRESENT: {', '.join(failures)}")
    sys.exit(1)
print("no defect")
