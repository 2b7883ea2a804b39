"""ASDL: FISHER_MC with n_mc_samples=M estimates the Fisher divided by M.

Needs only torch and ASDL (tested with asdfghjkl 0.1a5, torch 2.13.0):

    python asdl_A1.py

Exits with status 1 while the defect is present, 0 once it is fixed.

``FisherMCCrossEntropy._fisher_loop`` (and ``FisherMCMSE._fisher_loop``) divide each sampled
loss by ``n_mc_samples`` before its backward pass. The Fisher is quadratic in that gradient,
so every sample's outer product is scaled by 1/M**2 and their sum by 1/M, instead of the
1/M of an average. The mean of many FISHER_MC estimates must equal FISHER_EXACT (both are
ASDL's estimates of the same Fisher, with the same normalisation); it equals FISHER_EXACT / M.
"""

import sys
import warnings

import torch
from asdl import FisherConfig, get_fisher_maker
from asdl.grad_maker import LOSS_CROSS_ENTROPY
from asdl.matrices import FISHER_EXACT, FISHER_MC, SHAPE_KRON
from torch import nn

warnings.filterwarnings("ignore")  # ASDL's deprecation warnings of old backward hooks
torch.manual_seed(0)
N = 8
model = nn.Linear(4, 3).double()
X = torch.randn(N, 4, dtype=torch.float64)
y = torch.randint(3, (N,))
loss_func = nn.CrossEntropyLoss(reduction="sum")


def kfac_block(fisher_type: str, n_mc_samples: int = 1, seed: int | None = None):
    config = FisherConfig(
        fisher_type=fisher_type,
        fisher_shapes=[SHAPE_KRON],
        loss_type=LOSS_CROSS_ENTROPY,
        data_size=N,
        n_mc_samples=n_mc_samples,
        seed=seed,
    )
    maker = get_fisher_maker(model, config)
    outputs = maker.setup_model_call(model, X)
    maker.setup_loss_call(loss_func, outputs, y)
    maker.forward_and_backward()
    return torch.kron(model.fisher.kron.B, model.fisher.kron.A)  # row-major weight block


exact_trace = kfac_block(FISHER_EXACT).trace()
REPEATS = 200
defect = False
for M in (1, 4, 16):
    ratios = torch.stack(
        [kfac_block(FISHER_MC, M, seed).trace() / exact_trace for seed in range(REPEATS)]
    )
    mean, standard_error = ratios.mean().item(), (ratios.std() / REPEATS**0.5).item()
    print(
        f"n_mc_samples={M:2d}: mean over {REPEATS} seeds of trace(FISHER_MC) / "
        f"trace(FISHER_EXACT): expected 1, observed {mean:.3f} +- {standard_error:.3f} "
        f"(1/M = {1 / M:.3f})"
    )
    # more than 5 standard errors away from 1 (false-positive rate below 1e-6)
    defect |= abs(mean - 1) > 5 * standard_error
if defect:
    print("DEFECT PRESENT: FISHER_MC is FISHER_EXACT / n_mc_samples in expectation")
    sys.exit(1)
print("no defect: FISHER_MC is unbiased for every n_mc_samples")
