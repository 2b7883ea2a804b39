"""curvlinops: type-2 KFAC backpropagates the loss terms of one example together.

Needs only torch and curvlinops (tested with curvlinops-for-pytorch 3.0.1, torch 2.13.0):

    python curvlinops_C1.py

Exits with status 1 while the defect is present, 0 once it is fixed.

``fisher_type="type-2"`` backpropagates column ``c`` of the loss Hessian's square root for
all per-example loss terms at once, so gradients of different terms add up at a layer's
output before the outer product. Two consequences, each checked against curvlinops itself:

A. MSELoss on a Conv2d's (N, C, H, W) output. The last axis (W) is taken as the feature
   axis, so the C channels of one pixel are backpropagated together. For a single Conv2d
   with MSE, KFAC-expand is exact, so type-2 KFAC must equal ``GGNLinearOperator``. It does
   when the same model's output is moved to channels-last, and does not in NCHW.
B. ``kfac_approx="reduce"`` with per-position losses on (N, S, C) outputs. Reduce sums the
   layer's output gradients over positions, which now include the cross terms of different
   positions' loss terms; type-2 is then S times the expectation of the library's own MC
   estimator (``fisher_type="mc"``), although both estimate the same GGN.
"""

import inspect
import sys

import torch
from curvlinops import GGNLinearOperator, KFACLinearOperator
from torch import nn

torch.manual_seed(0)
DTYPE = torch.float64


SIGNATURE = inspect.signature(KFACLinearOperator.__init__).parameters
# 3.0.1 computes the factors with hooks only; the development head adds backend="make_fx"
BACKENDS = ("hooks", "make_fx") if "backend" in SIGNATURE else ("hooks",)


def parameters(model: nn.Module):
    """The release takes a list of parameters; the development head a dict of them."""
    named = {name: p for name, p in model.named_parameters() if name.endswith("weight")}
    return named if "dict" in str(SIGNATURE["params"].annotation) else list(named.values())


def dense(operator) -> torch.Tensor:
    return operator @ torch.eye(operator.shape[1], dtype=DTYPE)


def kfac(model, loss_func, data, backend: str, **options) -> torch.Tensor:
    if backend != "hooks":
        options["backend"] = backend
    operator = KFACLinearOperator(
        model, loss_func, parameters(model), data, check_deterministic=False, **options
    )
    return dense(operator)


def relative_error(observed: torch.Tensor, expected: torch.Tensor) -> float:
    return ((observed - expected).norm() / expected.norm()).item()


class ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


failures = []

# --- A: one Conv2d, MSE on the whole feature map: KFAC-expand type-2 is exact ----------
conv = nn.Conv2d(2, 3, kernel_size=3, padding=1).to(DTYPE)
X = torch.randn(2, 2, 4, 4, dtype=DTYPE)
Y = torch.randn(2, 3, 4, 4, dtype=DTYPE)
loss_func = nn.MSELoss(reduction="sum")
for backend in BACKENDS:
    for layout, model, targets in (
        ("NCHW (channels first)", nn.Sequential(conv), Y),
        ("NHWC (channels last) ", nn.Sequential(conv, ChannelsLast()), Y.permute(0, 2, 3, 1)),
    ):
        data = [(X, targets)]
        ggn = dense(GGNLinearOperator(model, loss_func, parameters(model), data))
        observed = kfac(model, loss_func, data, backend, fisher_type="type-2")
        error = relative_error(observed, ggn)
        print(
            f"A. [{backend}] Conv2d output {layout}: type-2 KFAC vs GGNLinearOperator, "
            f"relative error: expected < 1e-10, observed {error:.3g}"
        )
        if error > 1e-10:
            failures.append(f"A [{backend}] {layout.strip()}")

# --- B: per-position MSE on (N, S, C), KFAC-reduce: type-2 vs the MC estimator --------
linear = nn.Sequential(nn.Linear(3, 2)).to(DTYPE)
S = 3
data = [(torch.randn(4, S, 3, dtype=DTYPE), torch.randn(4, S, 2, dtype=DTYPE))]
MC_SAMPLES = 4000  # relative standard deviation of the MC trace below 1 %: 4 data x 4000 samples
for backend in BACKENDS:
    for approx in ("expand", "reduce"):
        options = {"kfac_approx": approx}
        type2 = kfac(linear, loss_func, data, backend, fisher_type="type-2", **options)
        mc = kfac(
            linear, loss_func, data, backend, fisher_type="mc", mc_samples=MC_SAMPLES, **options
        )
        ratio = (type2.trace() / mc.trace()).item()
        print(
            f"B. [{backend}] {approx:6s}, S={S} positions: trace(type-2 KFAC) / trace(MC KFAC, "
            f"{MC_SAMPLES} samples): expected 1 (within 0.05), observed {ratio:.3f}"
        )
        if abs(ratio - 1) > 0.05:
            failures.append(f"B [{backend}] {approx}")

if failures:
    print(f"DEFECT PRESENT: {', '.join(failures)}")
    sys.exit(1)
print("no defect: type-2 KFAC agrees with the exact GGN and with the MC limit")
