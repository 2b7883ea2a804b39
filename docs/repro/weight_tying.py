"""curvlinops, ASDL, nngeometry: a module applied twice gives a silent, wrong KFAC block.

KFAC assumes each layer is used once per forward pass. With ``head(shared(shared(x)))`` the
libraries below return a block for ``shared`` without an error; it is not the exact GGN
block (for a deep *linear* network with MSE, type-2 KFAC-expand of a layer used once is
exact, and the exact block is computed here by autograd). BackPACK raises instead.
Libraries that are not installed are skipped.
"""

import importlib.util
import json
import warnings

import torch
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
Jwb = torch.cat(
    [J[0].reshape(4, 2, 9), J[1].reshape(4, 2, 3)], -1
)  # (N, outputs, [W.flatten(), b])
exact = 2 * torch.einsum("nkp,nkq->pq", Jwb, Jwb)


def separate_block(A, B):
    return torch.block_diag(torch.kron(B, A), B)


errors = {}


def report(library, block, joint=False):
    # a separate bias has no weight-bias cross terms by definition: compare those blocks only
    target = exact if joint else torch.block_diag(exact[:9, :9], exact[9:, 9:])
    error = ((block - target).norm() / target.norm()).item()
    errors[library.split()[0]] = error
    print(
        f"{library}: no error raised; relative error of the 'shared' weight+bias block vs exact GGN: {error:.3g}"
    )


if importlib.util.find_spec("curvlinops"):
    from curvlinops import KFACLinearOperator

    op = KFACLinearOperator(
        model,
        loss_func,
        list(model.shared.parameters()),
        [(X, y)],
        fisher_type="type-2",
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    state = op.state_dict()
    # the inputs of both uses, x and shared(x), summed and divided by N, not 2N
    with torch.no_grad():
        inputs = torch.cat([X, model.shared(X)])
    A_both_uses_over_N = inputs.T @ inputs / len(X)
    A = state["input_covariances"]["shared"]
    errors["curvlinops_A_vs_both_uses_over_N"] = ((A - A_both_uses_over_N).norm() / A.norm()).item()
    print(
        "curvlinops: A vs (sum over both uses of x x^T) / N: relative error "
        f"{errors['curvlinops_A_vs_both_uses_over_N']:.1e}"
    )
    report(
        "curvlinops",
        separate_block(
            state["input_covariances"]["shared"], state["gradient_covariances"]["shared"]
        ),
    )

if importlib.util.find_spec("asdl"):
    from asdl import FisherConfig, get_fisher_maker
    from asdl.grad_maker import LOSS_MSE
    from asdl.matrices import FISHER_EXACT, SHAPE_KRON

    maker = get_fisher_maker(
        model,
        FisherConfig(
            fisher_type=FISHER_EXACT, fisher_shapes=[SHAPE_KRON], loss_type=LOSS_MSE, data_size=4
        ),
    )
    dy = maker.setup_model_call(model, X)
    maker.setup_loss_call(loss_func, dy, y)
    maker.forward_and_backward()
    kron = model.shared.fisher.kron
    report("ASDL (converted: B * 2 N R = B * 8)", separate_block(kron.A, 8 * kron.B))

if importlib.util.find_spec("nngeometry"):
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatKFAC
    from torch.utils.data import DataLoader, TensorDataset

    layers = LayerCollection()
    layers.add_layer_from_model(model, model.shared)
    Fm = FIM(
        model,
        DataLoader(TensorDataset(X, y), batch_size=4),
        PMatKFAC,
        variant="regression",
        layer_collection=layers,
    )
    A, G = Fm.data["shared"]
    joint = torch.kron(8 * G, A)  # row-major [W | b], bias column last
    order = torch.cat(
        [torch.arange(12).reshape(3, 4)[:, :3].flatten(), torch.arange(12).reshape(3, 4)[:, 3]]
    )
    report("nngeometry (converted: G * 2 N R = G * 8)", joint[order][:, order], joint=True)

print(json.dumps(errors))
