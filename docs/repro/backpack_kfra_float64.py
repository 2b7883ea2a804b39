"""BackPACK 1.7.1: KFRA with MSELoss fails on float64 models (library bug).

The batch-averaged MSE Hessian that KFRA backpropagates is created in the default dtype
(float32), so a float64 model raises "expected scalar type Double but found Float" unless
the global default dtype happens to be float64. KFLR and KFAC work on the same model.
"""

import json

import torch
from backpack import backpack, extend
from backpack.extensions import KFLR, KFRA
from torch import nn

torch.manual_seed(0)
outcomes = {}
for extension in (KFLR, KFRA):
    model = extend(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double())
    loss_func = extend(nn.MSELoss())
    loss = loss_func(
        model(torch.randn(5, 4, dtype=torch.float64)), torch.randn(5, 2, dtype=torch.float64)
    )
    try:
        with backpack(extension()):
            loss.backward()
        print(
            f"{extension.__name__}: ok, factor dtypes {[f.dtype for f in getattr(model[0].weight, extension.__name__.lower())]}"
        )
        outcomes[extension.__name__] = "ok"
    except RuntimeError as error:
        print(f"{extension.__name__}: RuntimeError: {error}")
        outcomes[extension.__name__] = f"RuntimeError: {error}"
print(json.dumps(outcomes))
