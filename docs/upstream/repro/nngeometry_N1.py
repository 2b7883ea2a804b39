"""nngeometry: FIM(variant="classif_logits") fails on float64 models.

Needs only torch and nngeometry (tested with nngeometry 0.4, torch 2.13.0; nngeometry
installs torchvision, which this script never imports):

    python nngeometry_N1.py

Exits with status 1 while the defect is present, 0 once it is fixed.

The closed-form square root of the softmax Fisher (Tanabe and Sagae 1992) builds its
triangular helper with ``torch.ones`` in the default dtype (float32) and multiplies it with
the float64 logits: "expected m1 and m2 to have the same dtype". The same function adds
``torch.finfo().eps`` (float32's) to a denominator, which limits float64 accuracy. The
expected values: the Fisher of the softmax cross-entropy, computed here with torch,
``(1/N) sum_n J_n^T (diag(p_n) - p_n p_n^T) J_n`` in nngeometry's per-datum normalisation.
"""

import sys

import torch
from nngeometry.metrics import FIM
from nngeometry.object import PMatDense
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
N, CLASSES = 4, 3
model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, CLASSES)).double()
X = torch.randn(N, 4, dtype=torch.float64)
loader = DataLoader(TensorDataset(X, torch.randint(CLASSES, (N,))), batch_size=N)
parameters = list(model.parameters())  # weight, bias of each layer, in module order


def jacobian(x: torch.Tensor) -> torch.Tensor:
    rows = [torch.autograd.grad(model(x)[0, k], parameters) for k in range(CLASSES)]
    return torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])


exact = torch.zeros(sum(p.numel() for p in parameters), sum(p.numel() for p in parameters))
exact = exact.double()
for x in X:
    J = jacobian(x[None])
    p = model(x[None]).softmax(dim=1)[0].detach()
    exact += J.T @ (torch.diag(p) - torch.outer(p, p)) @ J / N

try:
    fisher = FIM(model, loader, PMatDense, variant="classif_logits").to_torch()
except RuntimeError as failure:
    print(
        "FIM(PMatDense, classif_logits), float64 model: expected the Fisher of the softmax "
        f"cross-entropy, observed RuntimeError: {failure}"
    )
    print("DEFECT PRESENT")
    sys.exit(1)
error = ((fisher - exact).norm() / exact.norm()).item()
print(
    f"FIM(PMatDense, classif_logits), float64 model: dtype {fisher.dtype}; relative error vs "
    f"the exact Fisher: expected < 1e-12, observed {error:.1e}"
)
if fisher.dtype != torch.float64 or error > 1e-12:
    print("DEFECT PRESENT")
    sys.exit(1)
print("no defect")
