"""laplace-torch 0.3: the empirical Fisher for regression is twice that of its likelihood (library bug).

For likelihood="regression" laplace-torch computes curvature of MSELoss(reduction="sum"),
i.e. of ||f - y||^2, and multiplies it by ``factor = 0.5``, documented as the "conversion
factor between torch losses and base likelihoods", to get the Gaussian negative
log-likelihood c = ½||f - y||^2 (sigma_noise = 1). That is right for the GGN, which is linear
in the loss, but the empirical Fisher is quadratic in the loss gradient: the EF of
||f - y||^2 is 4 times the EF of c, so the 0.5 leaves 2 times the EF of c. It holds for the
full, diagonal and Kronecker structures and for every backend (curvlinops, ASDL, BackPACK;
BackPACK's EF has no Kronecker form). On one datum KFAC is exact, so the Kronecker block must
equal the exact block too.
"""

import copy
import json
import warnings

import torch
from laplace import Laplace
from laplace.curvature import (
    AsdlEF,
    AsdlGGN,
    BackPackEF,
    BackPackGGN,
    CurvlinopsEF,
    CurvlinopsGGN,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
X = torch.randn(1, 3, dtype=torch.float64)
y = torch.randn(1, 2, dtype=torch.float64)

# exact curvature of c = ½||f - y||^2 over all parameters (model.parameters() order):
# EF = g g^T, GGN = J^T J
parameters = list(model.parameters())
g = torch.cat(
    [t.flatten() for t in torch.autograd.grad(0.5 * ((model(X) - y) ** 2).sum(), parameters)]
)
J = torch.stack(
    [
        torch.cat([t.flatten() for t in torch.autograd.grad(model(X)[0, k], parameters)])
        for k in range(2)
    ]
)
exact = {"EF": torch.outer(g, g), "GGN": J.T @ J}
LAST_WEIGHT = slice(3 * 4 + 4, 3 * 4 + 4 + 4 * 2)  # weight 0, bias 0, then weight 2


def curvature(backend, structure):
    """laplace-torch's curvature of the one datum, and the exact one it must equal."""
    la = Laplace(
        copy.deepcopy(model),
        "regression",
        subset_of_weights="all",
        hessian_structure=structure,
        backend=backend,
        prior_precision=0.0,
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=1))
    target = exact["EF" if backend.__name__.endswith("EF") else "GGN"]
    if structure == "kron":
        B, A = la.H_facs.kfacs[2]  # parameters: weight 0, bias 0, weight 2, bias 2
        return torch.kron(B, A), target[LAST_WEIGHT, LAST_WEIGHT]
    if structure == "diag":
        return la.H, target.diagonal()
    return la.H, target


ratios = {}
for backend in (CurvlinopsGGN, AsdlGGN, BackPackGGN, CurvlinopsEF, AsdlEF, BackPackEF):
    for structure in ("full", "diag", "kron"):
        kind = "EF" if backend.__name__.endswith("EF") else "GGN"
        try:
            block, target = curvature(backend, structure)
        except NotImplementedError:
            print(f"{backend.__name__:13s} {structure:4s}: not available")
            continue
        ratio = ((block * target).sum() / (target * target).sum()).item()
        residual = ((block - ratio * target).norm() / target.norm()).item()
        ratios[f"{backend.__name__}_{structure}"] = ratio
        print(
            f"{backend.__name__:13s} {structure:4s}: laplace / exact {kind} of ½||f - y||² = "
            f"{ratio:.6f} (residual {residual:.0e})"
        )
print(json.dumps(ratios))
