"""BackPACK 1.7.1: Conv1d and Conv3d KFAC/KFLR blocks are |T| times KFC's, with KFAC-reduce's G.

The same as ``backpack_conv2d_hybrid.py`` in one and three dimensions: ``HBPConv1d`` and
``HBPConv3d`` are ``HBPConvNd`` with ``N=1`` and ``N=3``, the class whose Conv2d factors
``hbp/convnd.py`` documents. KFC (KFAC-expand) has ``A = 1/(N P) sum_{n,p} a a^T`` (patches
``a``, ``P = |T|`` output positions, here ``L`` and ``D * H * W``) and
``G = R sum_{n,k} sum_p g g^T``; BackPACK returns ``A_bp = P * A_expand`` and
``G_bp = R sum_{n,k} (sum_p g)(sum_p g)^T`` (KFAC-reduce's G). The patches are cut with
``Tensor.unfold`` in the order of ``weight.flatten(1)`` (input channel, then kernel taps);
everything below is computed with torch alone and compared with BackPACK's ``weight.kflr``.
"""

import json

import torch
from backpack import backpack, extend
from backpack.extensions import KFLR
from torch import nn

N, C_IN, C_OUT, KERNEL, SIZE, CLASSES = 4, 2, 3, 2, 3, 3
CONVOLUTIONS = {1: nn.Conv1d, 3: nn.Conv3d}


def patches(X, dims):
    """(N, P, C_in * KERNEL**dims): stride 1, no padding, positions and taps row-major."""
    for axis in range(dims):
        X = X.unfold(2 + axis, KERNEL, 1)  # (N, C_in, *positions, *taps)
    positions = list(range(2, 2 + dims))
    taps = list(range(2 + dims, 2 + 2 * dims))
    X = X.permute(0, *positions, 1, *taps)
    return X.reshape(X.shape[0], -1, C_IN * KERNEL**dims)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def measure(dims):
    torch.manual_seed(dims)
    conv = CONVOLUTIONS[dims](C_IN, C_OUT, KERNEL)
    P = (SIZE - KERNEL + 1) ** dims
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(C_OUT * P, CLASSES)).double()
    X = torch.randn(N, C_IN, *[SIZE] * dims, dtype=torch.float64)
    y = torch.randint(CLASSES, (N,))
    loss_func = nn.CrossEntropyLoss(reduction="sum")

    bp_model, bp_loss = extend(model), extend(loss_func)
    with backpack(KFLR()):
        bp_loss(bp_model(X), y).backward()
    G_bp, A_bp = (t.contiguous() for t in model[0].weight.kflr)

    unfolded = patches(X, dims)
    A_expand = torch.einsum("npi,npj->ij", unfolded, unfolded) / (N * P)
    z = model[0](X)
    z.retain_grad()
    f = model[3](model[2](model[1](z)))
    probs = f.detach().softmax(-1)
    hessians = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    eigenvalues, eigenvectors = torch.linalg.eigh(hessians)
    sqrt_h = eigenvectors * eigenvalues.clamp(min=0).sqrt()[:, None, :]  # columns: H_n = S S^T
    G_expand = torch.zeros(C_OUT, C_OUT, dtype=torch.float64)
    G_reduce = torch.zeros(C_OUT, C_OUT, dtype=torch.float64)
    for k in range(CLASSES):
        (g,) = torch.autograd.grad((f * sqrt_h[:, :, k]).sum(), z, retain_graph=True)
        g = g.flatten(2)  # (N, c_out, P)
        G_expand += torch.einsum("ncp,ndp->cd", g, g)
        G_reduce += torch.einsum("nc,nd->cd", g.sum(-1), g.sum(-1))

    expand = torch.kron(G_expand, A_expand)
    return {
        "P": P,
        "A_vs_P_A_expand": rel(A_bp, P * A_expand),
        "A_vs_A_expand": rel(A_bp, A_expand),
        "G_vs_G_reduce": rel(G_bp, G_reduce),
        "G_vs_G_expand": rel(G_bp, G_expand),
        "block_vs_expand": rel(torch.kron(G_bp, A_bp), expand),
        "block_over_P_vs_expand": rel(torch.kron(G_bp, A_bp) / P, expand),
    }


LABELS = {
    "A_vs_P_A_expand": "A_backpack vs P * A_expand",
    "A_vs_A_expand": "A_backpack vs A_expand",
    "G_vs_G_reduce": "G_backpack vs G_reduce",
    "G_vs_G_expand": "G_backpack vs G_expand",
    "block_vs_expand": "kron(G, A) backpack vs expand",
    "block_over_P_vs_expand": "kron(G, A) / P backpack vs expand",
}
values = {}
for dims, convolution in CONVOLUTIONS.items():
    errors = measure(dims)
    print(f"{convolution.__name__}: P = {errors['P']} output positions")
    for key, label in LABELS.items():
        print(f"  {label + ':':35} relative error {errors[key]:.3g}")
    values.update({f"conv{dims}d_{key}": value for key, value in errors.items()})
print(json.dumps(values))
