"""ASDL (asdfghjkl 0.1a5) FISHER_MC is too small by a factor n_mc_samples (library bug).

FisherMCCrossEntropy/FisherMCMSE divide each sampled *loss* by n_mc_samples before the
backward pass, so each outer product is divided by M**2 and their sum by M, instead of
averaging the outer products (divide by M once). The expectation of FISHER_MC must equal
FISHER_EXACT (same convention in ASDL); the ratio printed here is about 1/M.
"""

import json
import warnings

import torch
from asdl import FisherConfig, get_fisher_maker
from asdl.grad_maker import LOSS_CROSS_ENTROPY
from asdl.matrices import FISHER_EXACT, FISHER_MC, SHAPE_KRON
from torch import nn

warnings.filterwarnings("ignore")
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
X = torch.randn(8, 4, dtype=torch.float64)
y = torch.randint(3, (8,))
loss_func = nn.CrossEntropyLoss(reduction="sum")


def B(fisher_type, samples=1, seed=None):
    config = FisherConfig(
        fisher_type=fisher_type,
        fisher_shapes=[SHAPE_KRON],
        loss_type=LOSS_CROSS_ENTROPY,
        data_size=8,
        n_mc_samples=samples,
        seed=seed,
    )
    maker = get_fisher_maker(model, config)
    dy = maker.setup_model_call(model, X)
    maker.setup_loss_call(loss_func, dy, y)
    maker.forward_and_backward()
    return model[2].fisher.kron.B.clone()


exact = B(FISHER_EXACT)
ratios = {}
for M in (1, 4, 16):
    mean = sum(B(FISHER_MC, M, seed) for seed in range(100)) / 100
    ratios[f"ratio_M{M}"] = (mean.trace() / exact.trace()).item()
    print(
        f"n_mc_samples={M:2d}: trace(mean of 100 MC estimates) / trace(exact) = {ratios[f'ratio_M{M}']:.3f}  (1/M = {1 / M:.3f})"
    )
print(json.dumps(ratios))
