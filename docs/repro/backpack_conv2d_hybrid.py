"""BackPACK 1.7.1: the Conv2d KFAC/KFLR block is |T| times KFC's, with KFAC-reduce's G.

BackPACK cites Grosse & Martens 2016 (KFC) for convolutions, i.e. KFAC-expand:
``A = 1/(N P) sum_{n,p} a a^T`` (patches ``a``, ``P = |T|`` output positions) and
``G = R sum_{n,k} sum_p g g^T`` (``g``: gradient at one output position). BackPACK returns
``A_bp = P * A_expand`` (patches summed over positions, not averaged), which
``hbp/convnd.py`` documents ("differs from the KFC paper by a factor of |T|"), and
``G_bp = R sum_{n,k} (sum_p g)(sum_p g)^T``, the *reduce* output factor, documented there as
the GGN with respect to the convolution's bias; it equals KFC's G only when the output
gradients of different positions are uncorrelated. Everything below is computed with torch
alone and compared with BackPACK's ``weight.kflr``.
"""

import json

import torch
import torch.nn.functional as F
from backpack import backpack, extend
from backpack.extensions import KFLR
from torch import nn

torch.manual_seed(0)
N = 4
model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).double()
X = torch.randn(N, 2, 3, 3, dtype=torch.float64)
y = torch.randint(3, (N,))
loss_func = nn.CrossEntropyLoss(reduction="sum")

# BackPACK
bp_model, bp_loss = extend(model), extend(loss_func)
with backpack(KFLR()):
    bp_loss(bp_model(X), y).backward()
G_bp, A_bp = (t.contiguous() for t in model[0].weight.kflr)

# expand / reduce factors from first principles
patches = F.unfold(X, 2).transpose(1, 2)  # (N, P, c_in * k * k)
P = patches.shape[1]
A_expand = torch.einsum("npi,npj->ij", patches, patches) / (N * P)
z = model[0](X)
z.retain_grad()
f = model[3](model[2](model[1](z)))
probs = f.detach().softmax(-1)
hessians = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
eigenvalues, eigenvectors = torch.linalg.eigh(hessians)
sqrt_h = eigenvectors * eigenvalues.clamp(min=0).sqrt()[:, None, :]  # columns: H_n = S S^T
G_expand = torch.zeros(3, 3, dtype=torch.float64)
G_reduce = torch.zeros(3, 3, dtype=torch.float64)
for k in range(3):
    (g,) = torch.autograd.grad((f * sqrt_h[:, :, k]).sum(), z, retain_graph=True)
    g = g.flatten(2)  # (N, c_out, P)
    G_expand += torch.einsum("ncp,ndp->cd", g, g)
    G_reduce += torch.einsum("nc,nd->cd", g.sum(-1), g.sum(-1))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


expand = torch.kron(G_expand, A_expand)
errors = {
    "A_vs_P_A_expand": rel(A_bp, P * A_expand),
    "A_vs_A_expand": rel(A_bp, A_expand),
    "G_vs_G_reduce": rel(G_bp, G_reduce),
    "G_vs_G_expand": rel(G_bp, G_expand),
    "block_vs_expand": rel(torch.kron(G_bp, A_bp), expand),
    "block_over_P_vs_expand": rel(torch.kron(G_bp, A_bp) / P, expand),
}
print(f"P = {P} output positions")
print(f"A_backpack vs P * A_expand: relative error {errors['A_vs_P_A_expand']:.2e}")
print(f"A_backpack vs A_expand:     relative error {errors['A_vs_A_expand']:.2e}")
print(f"G_backpack vs G_reduce:     relative error {errors['G_vs_G_reduce']:.2e}")
print(f"G_backpack vs G_expand:     relative error {errors['G_vs_G_expand']:.2e}")
print(f"kron(G, A) backpack vs expand:      relative error {errors['block_vs_expand']:.3g}")
print(f"kron(G, A) / P backpack vs expand:  relative error {errors['block_over_P_vs_expand']:.3g}")
print(json.dumps({"P": P, **errors}))
