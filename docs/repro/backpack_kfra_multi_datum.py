"""BackPACK 1.7.1 KFRA is not type-2 KFAC on several data (approximation by design).

KFRA (Botev et al. 2017) backpropagates the *batch-averaged* output-side curvature through
the network instead of per-datum square roots. On one datum, and on the last layer, it
equals type-2 KFAC (BackPACK's KFLR); on earlier layers of a multi-datum batch it differs.
"""

import json

import torch
from backpack import backpack, extend
from backpack.extensions import KFLR, KFRA
from torch import nn

torch.manual_seed(3)
model = extend(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double())
loss_func = extend(nn.CrossEntropyLoss())
X, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(3, (6,))


def factors(extension, n):
    with backpack(extension()):
        loss_func(model(X[:n]), y[:n]).backward()
    name = extension.__name__.lower()
    return {
        layer: [f.contiguous() for f in getattr(model[int(layer)].weight, name)]
        for layer in ("0", "2")
    }


differences = {}
for n in (1, 6):
    kflr, kfra = factors(KFLR, n), factors(KFRA, n)
    for layer in ("0", "2"):
        a = torch.kron(*kfra[layer])
        b = torch.kron(*kflr[layer])
        differences[f"N{n}_layer{layer}"] = ((a - b).norm() / b.norm()).item()
        print(
            f"N={n} layer {layer}: relative difference KFRA vs KFLR (type-2) = {differences[f'N{n}_layer{layer}']:.3g}"
        )
print(json.dumps(differences))
