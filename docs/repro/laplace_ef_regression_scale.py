"""laplace-torch 0.3: the empirical Fisher for regression is twice that of its likelihood (library bug).

For likelihood="regression" laplace-torch computes curvature of MSELoss(reduction="sum"),
i.e. of ||f - y||^2, and multiplies it by 0.5 to get the Gaussian negative log-likelihood
c = ½||f - y||^2 (sigma_noise = 1). That is right for the GGN, which is linear in the loss,
but the empirical Fisher is quadratic in the loss gradient: the EF of ||f - y||^2 is 4 times
the EF of c, so the 0.5 leaves 2 times the EF of c (AsdlInterface.kron: "curv_factor = 0.5
# correct scaling for diag ef"; CurvlinopsInterface.kron multiplies by self.factor = 0.5).
On one datum KFAC is exact, so the Kronecker block must equal grad c grad c^T.
"""

import copy
import warnings

import torch
from laplace import Laplace
from laplace.curvature import AsdlEF, AsdlGGN, CurvlinopsEF, CurvlinopsGGN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
X = torch.randn(1, 3, dtype=torch.float64)
y = torch.randn(1, 2, dtype=torch.float64)

# exact blocks of the last weight for c = ½||f - y||^2: EF = g g^T, GGN = J^T J
weight = model[2].weight
g = torch.autograd.grad(0.5 * ((model(X) - y) ** 2).sum(), weight)[0].flatten()
exact = {"EF": torch.outer(g, g)}
J = torch.stack([torch.autograd.grad(model(X)[0, k], weight)[0].flatten() for k in range(2)])
exact["GGN"] = J.T @ J


def last_weight_block(backend):
    la = Laplace(
        copy.deepcopy(model),
        "regression",
        subset_of_weights="all",
        hessian_structure="kron",
        backend=backend,
        prior_precision=0.0,
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=1))
    B, A = la.H_facs.kfacs[2]  # parameters: weight 0, bias 0, weight 2, bias 2
    return torch.kron(B, A)


for backend, kind in (
    (CurvlinopsGGN, "GGN"),
    (AsdlGGN, "GGN"),
    (CurvlinopsEF, "EF"),
    (AsdlEF, "EF"),
):
    block, target = last_weight_block(backend), exact[kind]
    ratio = (block * target).sum() / (target * target).sum()
    print(f"{backend.__name__:13s}: block / exact {kind} of ½||f - y||² = {ratio.item():.6f}")
