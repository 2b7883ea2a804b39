"""curvlinops 3.0.1: type-2 KFAC mixes the loss terms of one example (library bug).

KFACLinearOperator(fisher_type="type-2") backpropagates each column of the loss Hessian's
square root for all per-example loss terms (positions) at once, so gradients of different
terms add up before the outer product. That is harmless only when different terms never
meet at a layer's output position. Two consequences, each checked against a ground truth
computed here with torch alone:

A. MSE on a (N, C, H, W) feature map: curvlinops treats the last axis (W) as the feature axis
   and (C, H) as loss terms, so the channels of one pixel are mixed. For the last Conv2d,
   KFAC-expand is exact (Eschenhagen et al. 2023), yet curvlinops' block is far off.
B. kfac_approx="reduce" with per-position losses, (N, S, D) outputs: type-2 differs from the
   Monte Carlo estimate it should be the expectation of (up to a factor S).
"""

import json

import torch
from curvlinops import KFACLinearOperator
from torch import nn
from torch.func import functional_call, jacrev

torch.manual_seed(0)

# --- A: last Conv2d, MSE on every pixel: expand is exact ---------------------------------
model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 1)).double()
X = torch.randn(2, 2, 3, 3, dtype=torch.float64)
y = torch.randn(2, 2, 3, 3, dtype=torch.float64)
loss_func = nn.MSELoss(reduction="sum")
last = model[1]
op = KFACLinearOperator(
    model,
    loss_func,
    [last.weight, last.bias],
    [(X, y)],
    fisher_type="type-2",
    separate_weight_and_bias=False,
    check_deterministic=False,
)
op.compute_kronecker_factors()
state = op.state_dict()
A, B = state["input_covariances"]["1"], state["gradient_covariances"]["1"]
kfac = torch.kron(B, A)  # over the row-major [W | b] (bias column last)

# exact GGN of [W | b] of the last layer: sum_n J_n^T (2 I) J_n for MSE with reduction="sum"
params = {"weight": last.weight.detach(), "bias": last.bias.detach()}
hidden = model[0](X).detach()


def out(p):
    return functional_call(last, p, (hidden,))


J = jacrev(out)(params)
Jw = J["weight"].reshape(2, 2 * 3 * 3, 2, 3)  # (N, outputs, c_out, c_in) for a 1x1 kernel
Jb = J["bias"].reshape(2, 2 * 3 * 3, 2, 1)
Jwb = torch.cat([Jw, Jb], -1).reshape(2, 18, -1)
ggn = 2 * torch.einsum("nkp,nkq->pq", Jwb, Jwb)
error = ((kfac - ggn).norm() / ggn.norm()).item()
print(
    f"A. last Conv2d, MSE on feature maps, type-2 expand vs exact GGN: relative error {error:.3g}"
)

# --- B: reduce with per-position MSE: type-2 vs the Monte Carlo limit -------------------
model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
X = torch.randn(4, 3, 3, dtype=torch.float64)  # (N, S, D): S = 3 positions per example
y = torch.randn(4, 3, 2, dtype=torch.float64)
results = {}
for fisher_type, samples in (("type-2", 1), ("mc", 20000)):
    op = KFACLinearOperator(
        model,
        nn.MSELoss(reduction="sum"),
        list(model.parameters()),
        [(X, y)],
        fisher_type=fisher_type,
        mc_samples=samples,
        kfac_approx="reduce",
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    results[fisher_type] = op.state_dict()["gradient_covariances"]
numbers = {"A_error": error}
for layer in ("0", "2"):
    t2, mc = results["type-2"][layer], results["mc"][layer]
    ratio = (t2.trace() / mc.trace()).item()
    numbers[f"B_ratio_layer{layer}"] = ratio
    print(
        f"B. reduce, per-position MSE, layer {layer}: trace(type-2 B) / trace(MC B, 20000 samples) = {ratio:.3f} (1 expected)"
    )
print(json.dumps(numbers))
assert error > 0.1, "fixed upstream?"
