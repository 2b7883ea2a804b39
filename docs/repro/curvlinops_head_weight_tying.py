"""curvlinops at its development head: a tied layer with the ``hooks`` and ``make_fx`` backends.

Needs curvlinops at the commit read (not in a release yet):
``pip install git+https://github.com/f-dangel/curvlinops@63fd690de70ce4f59a3361e6e3d89c71035845db``.
The head documents that the default ``hooks`` backend "will silently produce incorrect
results" on weight tying and offers ``backend="make_fx"`` for weight-tied architectures.
KFAC cannot be exact on a tied layer (no one Kronecker product of an ``A`` and a ``G`` is the
GGN block in general); this prints how far each backend's block for the shared layer is from
the exact GGN block, on the model of ``weight_tying.py``.
"""

import json
import warnings

import torch
from curvlinops import KFACLinearOperator
from torch import nn
from torch.func import functional_call, jacrev

warnings.filterwarnings("ignore")


class TiedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.shared(self.shared(x)))


torch.manual_seed(0)
model = TiedTwice().double()
X, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
loss_func = nn.MSELoss(reduction="sum")  # L = sum ||f - y||^2, output Hessian 2 I

params = {n: p.detach() for n, p in model.named_parameters()}
J = jacrev(
    lambda w, b: functional_call(model, {**params, "shared.weight": w, "shared.bias": b}, (X,)),
    argnums=(0, 1),
)(params["shared.weight"], params["shared.bias"])
Jwb = torch.cat([J[0].reshape(4, 2, 9), J[1].reshape(4, 2, 3)], -1)  # (N, outputs, [W, b])
exact = 2 * torch.einsum("nkp,nkq->pq", Jwb, Jwb)
# weight and bias are separate blocks by default: compare those blocks only
target = torch.block_diag(exact[:9, :9], exact[9:, 9:])

errors = {}
for backend in ("hooks", "make_fx"):
    op = KFACLinearOperator(
        model,
        loss_func,
        {n: p for n, p in model.named_parameters() if n.startswith("shared.")},
        [(X, y)],
        fisher_type="type-2",
        check_deterministic=False,
        backend=backend,
    )
    block = op @ torch.eye(12, dtype=torch.float64)
    errors[backend] = ((block - target).norm() / target.norm()).item()
    print(
        f"backend={backend!r}: relative error of the 'shared' block vs exact GGN: {errors[backend]:.3g}"
    )
print(json.dumps(errors))
