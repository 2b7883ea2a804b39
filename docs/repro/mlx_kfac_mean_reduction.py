"""mlx-kfac 0.4.0: ``loss_reduction="mean"`` undoes a mean over the batch axis only.

Needs only MLX and mlx-kfac (mlx[cpu]==0.32.4, mlx-kfac==0.4.0):
python docs/repro/mlx_kfac_mean_reduction.py

``KFAC._observed_factors`` multiplies the recorded output cotangents by
``activation.shape[0]`` (the batch size) in ``"mean"`` mode, so that the factor ``G`` of a loss
averaged over the batch equals that of the summed loss. The README's own example pairs
``loss_reduction="mean"`` with ``mx.mean((model(x) - y) ** 2)``, a mean over every element of
the ``(N, D)`` output: its cotangents keep the ``1/D``, and ``G`` is ``1/D**2`` of the summed
loss's, while ``A`` is unchanged. Not a failing check of the suite (its adapter gives the summed
loss in ``"sum"`` mode, declared as the convention ``mean-squared-error``); a trap for users
whose loss averages over more than the batch axis.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_kfac import KFAC

N, D_IN, D_OUT = 8, 3, 4
generator = np.random.default_rng(0)
X = mx.array(generator.normal(size=(N, D_IN)), dtype=mx.float32)
Y = mx.array(generator.normal(size=(N, D_OUT)), dtype=mx.float32)
WEIGHT = mx.array(generator.normal(size=(D_OUT, D_IN)), dtype=mx.float32)


def factors(reduction: str, reduce) -> tuple[np.ndarray, np.ndarray]:
    """The factors A and G after one step on the batch (the state starts from identities, which
    ``factor_decay=0`` discards)."""
    model = nn.Linear(D_IN, D_OUT, bias=False)
    model.weight = WEIGHT
    optimizer = KFAC(model=model, loss_reduction=reduction, factor_decay=0.0)
    loss_and_grad = nn.value_and_grad(model, lambda x, y: reduce((model(x) - y) ** 2))
    _, gradients = loss_and_grad(X, Y)
    optimizer.apply_gradients(gradients, model.trainable_parameters(), model=model)
    (state,) = optimizer.state["layers"].values()
    return np.array(state["A"]), np.array(state["G"])


A_sum, G_sum = factors("sum", mx.sum)
A_batch, G_batch = factors("mean", lambda e: mx.sum(e) / N)  # averaged over the batch axis only
A_readme, G_readme = factors("mean", mx.mean)  # the README's example: averaged over every element

print("A equal in all three:", np.allclose(A_sum, A_batch) and np.allclose(A_sum, A_readme))
print("G, loss averaged over the batch axis / summed loss:", (G_batch / G_sum).mean())
print(f"G, README's mean over all elements / summed loss: {(G_readme / G_sum).mean():.6g}")
print(f"1 / D_OUT**2 = {1 / D_OUT**2:.6g}")
assert np.allclose(G_batch, G_sum, rtol=1e-5)
assert np.allclose(G_readme, G_sum / D_OUT**2, rtol=1e-5)
