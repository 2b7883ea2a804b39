"""BackPACK: KFRA with MSELoss computes in float32 on a float64 model, and raises on two layers.

Needs only torch and BackPACK (tested with backpack-for-pytorch 1.7.1, torch 2.13.0):

    python backpack_B3.py

Exits with status 1 while the defect is present, 0 once it is fixed.

``MSELossDerivatives._sum_hessian`` builds the batch-summed loss Hessian with
``eye(D, device=...)``, i.e. in the global default dtype (float32), while the model's
tensors are float64. KFRA backpropagates that Hessian: on one Linear layer the output
factor comes back in float32 (rounded), and through a second layer the matrix product with
float64 tensors fails with "expected scalar type Double but found Float". KFLR works on the
same float64 models, and KFRA works when the global default dtype is float64. On one
Linear layer KFRA and KFLR coincide, which gives the expected values.
"""

import sys
import warnings

import torch
from backpack import backpack, extend
from backpack.extensions import KFLR, KFRA
from torch import nn

warnings.filterwarnings("ignore", message="Full backward hook")  # torch's, about the inputs
torch.manual_seed(0)
X = torch.randn(5, 4, dtype=torch.float64)
Y = torch.randn(5, 2, dtype=torch.float64)
one_layer = nn.Sequential(nn.Linear(4, 2)).double()
two_layers = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def factors(model: nn.Module, extension) -> list[torch.Tensor]:
    model = extend(model)
    loss = extend(nn.MSELoss())(model(X), Y)
    with backpack(extension()):
        loss.backward()
    return getattr(model[0].weight, extension.__name__.lower())


defect = False
expected = factors(one_layer, KFLR)
observed = factors(one_layer, KFRA)
error = max(
    ((o.double() - e).norm() / e.norm()).item() for o, e in zip(observed, expected, strict=True)
)
print(
    f"one Linear, float64 model: KFRA factor dtypes: expected [float64, float64], observed "
    f"{[str(f.dtype).removeprefix('torch.') for f in observed]}; relative difference to "
    f"KFLR (equal here): expected < 1e-12, observed {error:.1e}"
)
defect |= any(f.dtype != torch.float64 for f in observed) or error > 1e-12

torch.set_default_dtype(torch.float64)
factors(two_layers, KFRA)
torch.set_default_dtype(torch.float32)
print("Linear-Tanh-Linear, float64 model, default dtype float64: KFRA ok")
try:
    factors(two_layers, KFRA)
    print("Linear-Tanh-Linear, float64 model, default dtype float32: KFRA ok")
except RuntimeError as failure:
    print(
        "Linear-Tanh-Linear, float64 model, default dtype float32: expected float64 factors, "
        f"observed RuntimeError: {failure}"
    )
    defect = True

if defect:
    print("DEFECT PRESENT")
    sys.exit(1)
print("no defect")
