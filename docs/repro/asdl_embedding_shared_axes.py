"""ASDL (asdfghjkl 0.1a5) on nn.Embedding with a sequence of indices: silent, wrong factors.

An embedding is a linear layer on one-hot inputs (Eschenhagen et al. 2023). On (N, S) indices
ASDL's ``cov_kron_A`` sums each datum's one-hot vectors into counts ``c_n`` and returns
``sum_n c_n c_n^T`` (KFAC-reduce's input factor times S^2), while its gradient factor sums
``g g^T`` over the positions (KFAC-expand's). For an embedding whose outputs are mean-pooled
over the sequence and fed to a linear layer with MSE, KFAC-reduce is the exact GGN block; ASDL's
block is S times it. With one index per datum, (N, 1), ASDL's factors are classic KFAC; with
(N,) indices it raises. The GGN block is computed here from first principles.
"""

import json
import warnings

import torch
from asdl import FisherConfig, get_fisher_maker
from asdl.grad_maker import LOSS_MSE
from asdl.matrices import FISHER_EXACT, SHAPE_KRON
from torch import nn


class MeanOverPositions(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


warnings.filterwarnings("ignore")
torch.manual_seed(0)
N, S, V, D, C = 4, 3, 5, 3, 2
embedding = nn.Embedding(V, D).double()
model = nn.Sequential(embedding, MeanOverPositions(), nn.Linear(D, C, bias=False).double())
X = torch.tensor([[0, 1, 0], [2, 2, 4], [4, 1, 3], [0, 4, 4]])
y = torch.randn(N, C, dtype=torch.float64)
maker = get_fisher_maker(
    model,
    FisherConfig(
        fisher_type=FISHER_EXACT, fisher_shapes=[SHAPE_KRON], loss_type=LOSS_MSE, data_size=N
    ),
)
dy = maker.setup_model_call(model, X)
maker.setup_loss_call(nn.MSELoss(reduction="sum"), dy, y)
maker.forward_and_backward()

# The GGN of (1/N) sum_n 1/2 ||f_n - y_n||^2 (ASDL's normalisation) over weight.flatten(): the
# output f_n = W (1/S) sum_s E[x_{n,s}] has the Jacobian kron(c_n^T / S, W) (the weight is
# V x D, the transpose of a linear layer's), so the block is kron(A_reduce, W^T W)
counts = nn.functional.one_hot(X, V).double().sum(dim=1)
A_reduce = counts.T @ counts / (N * S**2)
W = model[2].weight.detach()
ggn = torch.kron(A_reduce, W.T @ W)
A_counts, B_grads = embedding.fisher.kron.A.double(), embedding.fisher.kron.B
# over weight.flatten() the one-hot factor is on the left
asdl = torch.kron(A_counts, B_grads)
ratio = ((asdl * ggn).sum() / (ggn * ggn).sum()).item()
off_diagonal = A_counts - torch.diag(A_counts.diagonal())
numbers = {
    "block_ratio": ratio,
    "residual_after_ratio": ((asdl - ratio * ggn).norm() / asdl.norm()).item(),
    "A_off_diagonal_share": (off_diagonal.norm() / A_counts.norm()).item(),
}
print(f"kron(A, B) (ASDL) / GGN block (KFAC-reduce, exact here) = {ratio:.4g} (S = {S})")
print(f"relative residual after that factor: {numbers['residual_after_ratio']:.2g}")
print(
    f"off-diagonal share of A (one-hot moments are diagonal): {numbers['A_off_diagonal_share']:.3f}"
)
# one index per datum, (N,): the same embedding and linear layer without the pooling
single = nn.Sequential(embedding, model[2])
single_maker = get_fisher_maker(single, maker.config)
try:
    dy = single_maker.setup_model_call(single, X[:, 0])
    single_maker.setup_loss_call(nn.MSELoss(reduction="sum"), dy, y)
    single_maker.forward_and_backward()
    numbers["single_index_error"] = ""
except RuntimeError as error:
    numbers["single_index_error"] = str(error)
print(f"(N,) indices: {numbers['single_index_error'] or 'no error'}")
print(json.dumps({"S": S, **numbers}))
