"""nngeometry 0.4: ``FIM(..., PMatEKFAC)`` holds KFAC's eigenvalues until ``update_diag``.

``PMatEKFAC`` is built from the KFAC factors' eigendecompositions with the diagonal
``kronecker(evals_g, evals_a)``: as returned by ``FIM`` it *is* KFAC written in its
eigenbasis. EKFAC's corrected eigenvalues (George et al. 2018) appear only after
``F.update_diag(loader)``. With per-datum gradients ``G_n`` the corrected diagonal must be
``mean_n (QGᵀ G_n QA)²`` (the exact Fisher in the eigenbasis, here computed by hand).
"""

import json

import torch
from nngeometry.layercollection import LayerCollection
from nngeometry.metrics import FIM
from nngeometry.object import PMatEKFAC, PMatKFAC
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
model = model.double()
X = torch.randn(6, 4, dtype=torch.float64)
loader = DataLoader(TensorDataset(X, torch.randn(6, 2, dtype=torch.float64)), batch_size=6)
layers = LayerCollection()
layers.add_layer_from_model(model, model[0])
kfac = FIM(model, loader, PMatKFAC, variant="regression", layer_collection=layers)
ekfac = FIM(model, loader, PMatEKFAC, variant="regression", layer_collection=layers)


def gap(a, b):
    return ((a - b).norm() / b.norm()).item()


def outputs(weight, x):
    return model[2](torch.tanh(x @ weight.T))


(QA, QG), diag = ekfac.data[0]["0"], ekfac.data[1]["0"]
# the regression Fisher is mean_n J_nᵀ J_n; its diagonal in the basis QG ⊗ QA
jacobians = torch.stack(
    [torch.autograd.functional.jacobian(lambda w, x=x: outputs(w, x), model[0].weight) for x in X]
)  # (N, outputs, 3, 4): per datum and output, the gradient of the first layer's weight
corrected = (torch.einsum("gi,nogj,jk->noik", QG, jacobians, QA) ** 2).sum(1).mean(0)
gaps = {
    "ekfac_vs_kfac": gap(ekfac.to_torch(), kfac.to_torch()),
    "before_update_diag": gap(diag.view(3, 4), corrected),
}
print(f"FIM(PMatEKFAC) vs FIM(PMatKFAC), dense: relative gap {gaps['ekfac_vs_kfac']:.1e}")
print(f"diagonal before update_diag vs corrected: relative gap {gaps['before_update_diag']:.2f}")
ekfac.update_diag(loader)
after = ekfac.data[1]["0"].view(3, 4)
gaps["after_update_diag"] = gap(after, corrected)
print(f"diagonal after update_diag vs corrected: relative gap {gaps['after_update_diag']:.1e}")
print(json.dumps(gaps))
