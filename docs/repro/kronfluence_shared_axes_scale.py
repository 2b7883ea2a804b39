"""kronfluence 1.0.1 averages G over positions as well as examples (convention difference).

On a Linear layer whose input has shared axes, (N, S, D), kronfluence flattens the positions
into rows, and on a Conv2d it unfolds the L output locations into rows; it divides both
covariances by the number of rows, N*S or N*L (TrackedLinear/TrackedConv2d
.get_flattened_activation; perform_eigendecomposition divides by the counts). KFAC-expand
(Eschenhagen et al. 2023; KFC, Grosse & Martens 2016, for Conv2d) averages A over the rows
but sums G over each example's positions: G_expand = (1/N) sum_{n,s} g g^T. So kronfluence's
G, and its KFAC block, is 1/S (1/L) of KFAC-expand's. Its EKFAC eigenvalues (lambda_matrix)
use per-example gradients summed over positions and are divided by N only, so they sit on
KFAC-expand's scale, not on that of the KFAC factors they replace.
"""

import json
import tempfile
import warnings

import torch
import torch.nn.functional as F
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments
from kronfluence.task import Task
from torch import nn
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore")
torch.manual_seed(0)
N = 3


class SummedSquaredError(Task):
    def compute_train_loss(self, batch, model, sample=False):
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets, reduction="sum")

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model)


def compare(name, model, X, positions_last):
    """kronfluence's G against G_expand by hand (empirical Fisher, g = d loss / d output)."""
    y = torch.randn_like(model(X))
    g = 2 * (model(X) - y).detach()
    g = g.movedim(1, -1) if not positions_last else g
    g = g.reshape(N, -1, g.shape[-1])  # (N, positions, out)
    positions = g.shape[1]
    G_expand = torch.einsum("npc,npd->cd", g, g) / N
    task = SummedSquaredError()
    tracked = prepare_model(model, task)
    dtype = torch.float64
    arguments = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=True,
        activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype,
        per_sample_gradient_dtype=dtype,
        lambda_dtype=dtype,
    )
    with tempfile.TemporaryDirectory() as directory:
        analyzer = Analyzer(
            "repro", tracked, task, cpu=True, disable_tqdm=True, output_dir=directory
        )
        analyzer.fit_all_factors(
            "f", TensorDataset(X, y), per_device_batch_size=N, factor_args=arguments
        )
        covariances = analyzer.load_covariance_matrices("f")
        lambdas = analyzer.load_lambda_matrices("f")
    count = covariances["num_gradient_covariance_processed"]["0"].item()
    G = covariances["gradient_covariance"]["0"] / count
    ratio = (G * G_expand).sum() / (G_expand * G_expand).sum()
    error = (positions * G - G_expand).norm() / G_expand.norm()
    A_count = covariances["num_activation_covariance_processed"]["0"].item()
    A_trace = covariances["activation_covariance"]["0"].trace() / A_count
    eigenvalue_sum = lambdas["lambda_matrix"]["0"].sum() / lambdas["num_lambda_processed"]["0"]
    # the trace of a block is the sum of its eigenvalues in any basis
    ekfac_vs_kfac = (eigenvalue_sum / (G.trace() * A_trace)).item()
    ekfac_vs_expand = (eigenvalue_sum / (G_expand.trace() * A_trace)).item()
    print(
        f"{name}: rows counted for G {count} (N * positions = {N * positions}), "
        f"for lambda {lambdas['num_lambda_processed']['0'].item()} (N = {N})"
    )
    print(
        f"{name}: G_kronfluence / G_expand = {ratio.item():.6f} (1/positions = {1 / positions:.6f}); "
        f"positions * G_kronfluence vs G_expand: relative error {error.item():.1e}"
    )
    print(
        f"{name}: sum of EKFAC eigenvalues / trace of the KFAC block: kronfluence's "
        f"{ekfac_vs_kfac:.3f}, KFAC-expand's {ekfac_vs_expand:.3f}"
    )
    return {
        "positions": positions,
        "G_ratio": ratio.item(),
        "scaled_G_error": error.item(),
        "ekfac_vs_kfac": ekfac_vs_kfac,
        "ekfac_vs_expand": ekfac_vs_expand,
    }


linear = compare(
    "Linear on (N, S=4, D)",
    nn.Sequential(nn.Linear(5, 2)).double(),
    torch.randn(N, 4, 5, dtype=torch.float64),
    positions_last=True,
)
conv = compare(
    "Conv2d with L=16 locations",
    nn.Sequential(nn.Conv2d(2, 3, 3)).double(),
    torch.randn(N, 2, 6, 6, dtype=torch.float64),
    positions_last=False,
)
numbers = {
    f"{layer}_{key}": value
    for layer, n in (("linear", linear), ("conv2d", conv))
    for key, value in n.items()
}
print(json.dumps(numbers))
