"""laplace-torch 0.3 with the ASDL backend: an Embedding's Kronecker factors in a Linear layout.

``AsdlInterface._get_kron_factors`` appends ``[kron.B, kron.A]`` for every module with a
weight, and ``Kron`` reads each pair as the block ``kron(first, second)`` over the parameter's
``flatten()`` (``Kron.to_matrix``; ``Kron._bmm`` reshapes the parameter as
``(len(first), len(second))``; ``Kron.init_from_model`` sizes the pair from a ``(out, in)``
weight). That is a Linear layer's layout. An ``nn.Embedding``'s weight is
``(num_embeddings, dim)``, the transpose of its Linear equivalent's, and ASDL's ``A`` is its
``num_embeddings``-square one-hot factor, ``B`` the ``dim``-square gradient factor: over
``weight.flatten()`` the block is ``kron(A, B)``. With ``num_embeddings != dim`` fitting
raises (the sizes of ``init_from_model``'s zeros and ASDL's factors differ); with
``num_embeddings == dim`` it runs and the posterior precision's Embedding block is the
wrong matrix, without an error. On one datum with one index (``(1, 1)`` indices) KFAC is
exact, so the block must equal the exact GGN.
"""

import json
import warnings

import torch
from laplace import Laplace
from laplace.curvature import AsdlGGN
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")
X = torch.tensor([[2]])  # one datum, one index: (N, S) = (1, 1)


def fitted(num_embeddings: int, dim: int):
    """A KronLaplace of an Embedding and a linear layer fitted on the one datum, the model and
    the exact GGN of ½||f - y||² (sigma_noise = 1) over the embedding's weight.flatten()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(num_embeddings, dim), nn.Flatten(), nn.Linear(dim, 2))
    model = model.double()
    y = torch.randn(1, 2, dtype=torch.float64)
    weight = model[0].weight
    J = torch.stack([torch.autograd.grad(model(X)[0, k], weight)[0].flatten() for k in range(2)])
    la = Laplace(
        model,
        "regression",
        subset_of_weights="all",
        hessian_structure="kron",
        backend=AsdlGGN,
        sigma_noise=1.0,
        prior_precision=0.0,
    )
    la.fit(DataLoader(TensorDataset(X, y), batch_size=1))
    return la, J.T @ J


try:
    fitted(4, 3)
    numbers = {"unequal_sizes_error": ""}
except RuntimeError as error:
    numbers = {"unequal_sizes_error": str(error)}
print(f"num_embeddings 4, dim 3: {numbers['unequal_sizes_error'] or 'no error'}")

la, exact = fitted(3, 3)
first, second = la.H_facs.kfacs[0]
laplace_block = la.H_facs.to_matrix()[:9, :9]
numbers["laplace_error"] = ((laplace_block - exact).norm() / exact.norm()).item()
numbers["swapped_error"] = ((torch.kron(second, first) - exact).norm() / exact.norm()).item()
print(
    "num_embeddings 3, dim 3: laplace's Embedding block vs the exact GGN (KFAC is exact here): "
    f"{numbers['laplace_error']:.3g}"
)
print(f"the same factors in the Embedding's layout: {numbers['swapped_error']:.2g}")
print(json.dumps(numbers))
