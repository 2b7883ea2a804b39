"""ASDL (asdfghjkl 0.1a5) on nn.Linear with shared axes: silent, wrong factors (library limitation).

With inputs (N, S, D) ASDL runs without complaint, but treats the extra axis neither as
KFAC-expand nor as KFAC-reduce (Eschenhagen et al. 2023): ``A`` is summed over the S
positions instead of averaged, and its MSE Fisher loop ``logits[:, i]`` indexes the position
axis instead of the feature axis, so ``B`` is not the expand factor either. For a deep linear
network with MSE on every position KFAC-expand is exact; ASDL's block is far from it. The
expand factors are computed here from first principles.
"""

import json
import warnings

import torch
from asdl import FisherConfig, get_fisher_maker
from asdl.grad_maker import LOSS_MSE
from asdl.matrices import FISHER_EXACT, SHAPE_KRON
from torch import nn

warnings.filterwarnings("ignore")
torch.manual_seed(0)
N, S = 4, 3
model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
X, y = torch.randn(N, S, 3, dtype=torch.float64), torch.randn(N, S, 2, dtype=torch.float64)
maker = get_fisher_maker(
    model,
    FisherConfig(
        fisher_type=FISHER_EXACT, fisher_shapes=[SHAPE_KRON], loss_type=LOSS_MSE, data_size=N
    ),
)
dy = maker.setup_model_call(model, X)
maker.setup_loss_call(nn.MSELoss(reduction="sum"), dy, y)
maker.forward_and_backward()

# KFAC-expand for L = sum ||f - y||^2 (output Hessian 2 I), in ASDL's normalisation (1/N, NLL 1/2||.||^2)
a = X.reshape(-1, 3)
A_expand = a.T @ a / (N * S)
W2 = model[1].weight.detach()
# (1/N) sum_{n, s, k} g g^T with g = W2^T e_k at every position: S * W2^T W2
B_expand = S * W2.T @ W2
A, B = model[0].fisher.kron.A, model[0].fisher.kron.B
expand = torch.kron(B_expand, A_expand)
asdl = torch.kron(B, A)
numbers = {
    "A_ratio": (A.trace() / A_expand.trace()).item(),
    "B_ratio": (B.trace() / B_expand.trace()).item(),
    "block_error": ((asdl - expand).norm() / expand.norm()).item(),
}
print(f"trace(A_asdl) / trace(A_expand) = {numbers['A_ratio']:.3f} (S = {S})")
print(f"trace(B_asdl) / trace(B_expand) = {numbers['B_ratio']:.3f}")
print(
    f"relative error of kron(B, A) (ASDL) vs KFAC-expand (exact here): {numbers['block_error']:.3g}"
)
print(json.dumps({"S": S, **numbers}))
