"""A custom problem for ``--case examples/custom_case.py:two_layer_regression``.

Checks that do not depend on exactness (agreement with the reference, invariances, structure,
side effects, parity) run on it; the report names it by ``case_id``.
"""

import torch
from torch import nn

from kfac_conformance import Problem


def two_layer_regression() -> Problem:
    with torch.random.fork_rng():  # the same weights on every call, global RNG untouched
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.Sigmoid(), nn.Linear(5, 2)).double()
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(10, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["0", "2"], case_id="my-two-layer-regression")
