"""laplace-torch: for regression, the empirical Fisher is twice that of the Gaussian likelihood.

Needs only torch and laplace-torch (tested with laplace-torch 0.3, which brings
curvlinops-for-pytorch 3.0.1, asdfghjkl 0.1a4 and backpack-for-pytorch 1.7.1; torch 2.13.0;
``pip uninstall torchvision`` if ``import laplace`` fails on torchvision's operators):

    python laplace_L1.py

Exits with status 1 while the defect is present, 0 once it is fixed.

For ``likelihood="regression"`` the curvature backends differentiate
``MSELoss(reduction="sum")``, i.e. ``||f - y||^2``, and multiply by ``factor = 0.5``, "the
conversion factor between torch losses and base likelihoods ... to get to N(f, 1) from
MSELoss". That conversion is right for the loss, the Hessian and the GGN, which are linear
in the loss. The empirical Fisher is quadratic in the loss gradient: the EF of
``||f - y||^2`` is 4 times the EF of the negative log-likelihood ``c = ½||f - y||^2``, so
multiplying by ``factor`` leaves 2 times it (the conversion is ``factor**2``).

A. One datum: every EF backend and structure must equal the EF of ``c`` built with torch
   (``g g^T`` with ``g`` the gradient of ``c``; Kronecker: its weight and bias blocks, which
   KFAC reproduces exactly for one datum and one layer). The GGN backends are the control.
B. Targets drawn from the model's own likelihood ``y ~ N(f(x), 1)``: the expected EF is the
   Fisher, which laplace's GGN backend computes; the EF comes out twice as large.
"""

import sys
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

warnings.filterwarnings("ignore")  # ASDL's and BackPACK's warnings about backward hooks
torch.manual_seed(0)
STATE = nn.Linear(3, 2).double().state_dict()


def fresh_model() -> nn.Module:
    """A new module per fit: ASDL's backward hooks and BackPACK's full ones cannot share one."""
    model = nn.Linear(3, 2).double()
    model.load_state_dict(STATE)
    return model


model = fresh_model()
x = torch.randn(1, 3, dtype=torch.float64)
y = torch.randn(1, 2, dtype=torch.float64)
n_weight = model.weight.numel()


def curvature(backend, structure: str, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    la = Laplace(
        fresh_model(),
        "regression",
        subset_of_weights="all",
        hessian_structure=structure,
        backend=backend,
        sigma_noise=1.0,
        prior_precision=0.0,
    )
    la.fit(DataLoader(TensorDataset(X, Y), batch_size=len(X)))
    return la.H_facs.to_matrix() if structure == "kron" else la.H


def nll_gradient() -> torch.Tensor:
    nll = 0.5 * ((model(x) - y) ** 2).sum()  # Gaussian, sigma = 1, constants dropped
    return torch.cat([g.flatten() for g in torch.autograd.grad(nll, list(model.parameters()))])


def jacobian() -> torch.Tensor:
    rows = [torch.autograd.grad(model(x)[0, k], list(model.parameters())) for k in range(2)]
    return torch.stack([torch.cat([g.flatten() for g in row]) for row in rows])


g, J = nll_gradient(), jacobian()
exact = {"EF": torch.outer(g, g), "GGN": J.T @ J}


def reference(kind: str, structure: str) -> torch.Tensor:
    full = exact[kind]
    if structure == "diag":
        return full.diagonal()
    if structure == "kron":  # weight and bias blocks, no cross terms
        return torch.block_diag(full[:n_weight, :n_weight], full[n_weight:, n_weight:])
    return full


defect = False
for backend, kind in (
    (CurvlinopsGGN, "GGN"),
    (AsdlGGN, "GGN"),
    (BackPackGGN, "GGN"),
    (CurvlinopsEF, "EF"),
    (AsdlEF, "EF"),
    (BackPackEF, "EF"),
):
    for structure in ("full", "diag", "kron"):
        label = f"A. {backend.__name__:13s} {structure:4s}"
        try:
            observed = curvature(backend, structure, x, y)
        except NotImplementedError as refusal:
            print(f"{label}: not offered ({refusal})")
            continue
        target = reference(kind, structure)
        ratio = ((observed * target).sum() / (target * target).sum()).item()
        residual = ((observed - ratio * target).norm() / observed.norm()).item()
        print(
            f"{label}: H / exact {kind:3s} of ½||f - y||²: expected 1.000000, observed "
            f"{ratio:.6f} (residual after that scale {residual:.0e})"
        )
        defect |= abs(ratio - 1) > 1e-8

# --- B: y drawn from N(f(x), 1): E[EF] = Fisher = GGN ------------------------------------
N = 20000
X = torch.randn(N, 3, dtype=torch.float64)
with torch.no_grad():
    Y = model(X) + torch.randn(N, 2, dtype=torch.float64)
ef, ggn = curvature(CurvlinopsEF, "full", X, Y), curvature(CurvlinopsGGN, "full", X, Y)
ratio = (ef.trace() / ggn.trace()).item()
print(
    f"B. y ~ N(f(x), 1), N={N}: trace(CurvlinopsEF) / trace(CurvlinopsGGN), full: "
    f"expected 1 (MC, within 0.05), observed {ratio:.3f}"
)
defect |= abs(ratio - 1) > 0.05

if defect:
    print("DEFECT PRESENT: the regression EF is 2x the EF of its Gaussian likelihood")
    sys.exit(1)
print("no defect")
