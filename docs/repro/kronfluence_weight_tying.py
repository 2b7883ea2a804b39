"""kronfluence 1.0.1: a module applied twice gives a silent answer (finding G1).

With ``head(shared(shared(x)))`` kronfluence fits factors for ``shared`` without an error. Its
covariance hooks (``CovarianceTracker``) add the rows of both uses to ``A`` and ``G`` and count
them, so both are averaged over 2N rows, as if the two uses were two positions. Its lambda
hooks (``LambdaTracker``), with the default ``has_shared_parameters=False``, compute one
per-example gradient from the last use and then clear the cache, which removes the pending
hook of the first use: the EKFAC eigenvalues see the last use only (the RuntimeError that
names a module "encountered multiple times in the forward pass" is never reached). With
``has_shared_parameters=True`` the eigenvalues use each example's gradient summed over both
uses; the eigenbasis still comes from the merged ``A`` and ``G``. None of the three blocks is
the exact empirical Fisher block (mean over examples) of the tied layer.
"""

import copy
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


class TiedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.shared(self.shared(x)))


class SummedSquaredError(Task):
    def compute_train_loss(self, batch, model, sample=False):
        inputs, targets = batch
        return F.mse_loss(model(inputs), targets, reduction="sum")

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model)


torch.manual_seed(0)
N = 4
model = TiedTwice().double()
X, y = torch.randn(N, 3, dtype=torch.float64), torch.randn(N, 2, dtype=torch.float64)

# per use: the inputs with the bias's ones column ([W | b], kronfluence's layout) and the
# gradients of the summed squared error with respect to that use's output
first = model.shared(X)
second = model.shared(first)
first.retain_grad()
second.retain_grad()
F.mse_loss(model.head(second), y, reduction="sum").backward()
ones = torch.ones(N, 1, dtype=torch.float64)
inputs = [torch.cat([X, ones], 1), torch.cat([first.detach(), ones], 1)]
gradients = [first.grad.detach(), second.grad.detach()]
model.zero_grad()


def per_example_gradient(n, uses):
    """d loss_n / d [W | b] (3 x 4) through the given uses."""
    return sum(torch.outer(gradients[u][n], inputs[u][n]) for u in uses)


exact = (
    sum(
        torch.outer(g.flatten(), g.flatten())
        for g in (per_example_gradient(n, (0, 1)) for n in range(N))
    )
    / N
)
A_rows = sum(a.T @ a for a in inputs) / (2 * N)
G_rows = sum(g.T @ g for g in gradients) / (2 * N)


def relative(block, target):
    return ((block - target).norm() / target.norm()).item()


def ekfac_block(QA, QG, S):
    basis = torch.kron(QG, QA)
    return basis @ torch.diag(S.flatten()) @ basis.T


def eigenvalues(QA, QG, uses):
    return sum((QG.T @ per_example_gradient(n, uses) @ QA) ** 2 for n in range(N)) / N


def fit(shared_parameters):
    task = SummedSquaredError()
    tracked = prepare_model(copy.deepcopy(model), task)
    dtype = torch.float64
    arguments = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=True,
        has_shared_parameters=shared_parameters,
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
        return (
            analyzer.load_covariance_matrices("f"),
            analyzer.load_eigendecomposition("f"),
            analyzer.load_lambda_matrices("f"),
        )


numbers = {}
for shared_parameters in (False, True):
    covariances, eigen, lambdas = fit(shared_parameters)
    count = covariances["num_activation_covariance_processed"]["shared"].item()
    A = covariances["activation_covariance"]["shared"] / count
    G = covariances["gradient_covariance"]["shared"] / count
    QA = eigen["activation_eigenvectors"]["shared"]
    QG = eigen["gradient_eigenvectors"]["shared"]
    S = lambdas["lambda_matrix"]["shared"] / lambdas["num_lambda_processed"]["shared"]
    kfac, ekfac = torch.kron(G, A), ekfac_block(QA, QG, S)
    uses = (0, 1) if shared_parameters else (1,)
    flag = f"has_shared_parameters={shared_parameters}"
    if not shared_parameters:
        numbers["rows_counted"] = count
        numbers["kfac_vs_both_uses_rows"] = relative(kfac, torch.kron(G_rows, A_rows))
        numbers["kfac_vs_exact"] = relative(kfac, exact)
        print(f"kronfluence KFAC ({flag}): no error raised; rows counted {count} (2 N = {2 * N})")
        print(
            "kronfluence KFAC: block vs kron(G, A) averaged over the rows of both uses: "
            f"relative error {numbers['kfac_vs_both_uses_rows']:.1e}; vs the exact empirical "
            f"Fisher block: {numbers['kfac_vs_exact']:.3g}"
        )
    key = "ekfac_shared" if shared_parameters else "ekfac_default"
    numbers[f"{key}_vs_model"] = relative(ekfac, ekfac_block(QA, QG, eigenvalues(QA, QG, uses)))
    numbers[f"{key}_vs_exact"] = relative(ekfac, exact)
    which = (
        "each example's gradient summed over both uses"
        if shared_parameters
        else "the last use only"
    )
    print(
        f"kronfluence EKFAC ({flag}): no error raised; eigenvalues vs those of {which}: "
        f"relative error {numbers[f'{key}_vs_model']:.1e}; block vs the exact empirical Fisher "
        f"block: {numbers[f'{key}_vs_exact']:.3g}"
    )
print(json.dumps(numbers))
