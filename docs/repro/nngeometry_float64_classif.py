"""nngeometry 0.4: FIM(..., variant="classif_logits") fails on float64 models (library bug).

The closed-form square root of the softmax Fisher builds its triangular helper with
``torch.ones`` in the default dtype (float32) and multiplies it with float64 logits:
"expected m1 and m2 to have the same dtype". ``regression`` and ``classif_binary_logits``
work on the same model.
"""

import json

import torch
from nngeometry.metrics import FIM
from nngeometry.object import PMatKFAC
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double()
X = torch.randn(5, 4, dtype=torch.float64)
loader = DataLoader(TensorDataset(X, torch.randint(3, (5,))), batch_size=5)
outcomes = {}
for variant in ("regression", "classif_binary_logits", "classif_logits"):
    try:
        F = FIM(model, loader, PMatKFAC, variant=variant)
        print(f"{variant}: ok, A dtype {F.data['0'][0].dtype}")
        outcomes[variant] = "ok"
    except RuntimeError as error:
        print(f"{variant}: RuntimeError: {error}")
        outcomes[variant] = f"RuntimeError: {error}"
print(json.dumps(outcomes))
