"""BackPACK's Conv1d and Conv3d through the adapters (skipped where BackPACK is not installed).

BackPACK computes every convolution with one class (``hbp/convnd.py``), whose block is
documented to differ from KFC's (finding B1 of docs/findings.md): ``kron(G_reduce, |T| A_expand)``
with ``|T|`` the number of output positions. The adapters hand it on unconverted, so that is
what they must return, in ``weight.flatten()`` order, in one and three dimensions as in two.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kfac_conformance import NotSupported
from kfac_conformance.cases.canonical import ALL_CASES
from kfac_conformance.cases.case import Case
from kfac_conformance.comparison.blocks import relative_error
from kfac_conformance.contract.loading import load_candidate
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import Session
from kfac_ref.compute import compute_kfac
from kfac_ref.factors import KroneckerFactors

# a Conv3d network with an (N, C) output, which BackPACK's losses take (every Conv3d case of the
# catalogue has MSE on the feature map, which BackPACK refuses): 64 and 8 output positions
CNN3D = Case(
    id="cnn3d[tanh-ce]",
    architecture=[
        ["conv3d", 1, 2, 2, 1, 1, 1, True],
        ["tanh"],
        ["conv3d", 2, 2, 2, 2, 0, 1, True],
        ["flatten"],
        ["linear", 16, 3, True],
    ],
    input_shape=(3, 1, 3, 3, 3),
    loss="ce",
    seed=7,
)
PROBLEMS = {
    "cnn1d[tanh-ce]": ALL_CASES["cnn1d[tanh-ce]"].make_problem,
    CNN3D.id: CNN3D.make_problem,
}
TYPE2 = Request("type-2", "expand", bias="separate")


def output_positions(problem: Problem) -> dict[str, int]:
    """``|T|`` of each convolution of ``problem.layers``, from one forward pass."""
    positions: dict[str, int] = {}
    handles = [
        problem.model.get_submodule(layer).register_forward_hook(
            lambda module, inputs, output, layer=layer: positions.__setitem__(
                layer, output.shape[2:].numel()
            )
        )
        for layer in problem.layers
        if isinstance(problem.model.get_submodule(layer), nn.Conv1d | nn.Conv3d)
    ]
    with torch.no_grad():
        problem.model(problem.batches[0][0])
    for handle in handles:
        handle.remove()
    return positions


@pytest.mark.parametrize("case_id", sorted(PROBLEMS))
def test_backpack_kflr_convolutions_are_the_documented_hybrid_block(case_id):
    """Conv layers: ``kron(G_reduce, |T| A_expand)`` (B1); the Linear head: KFAC-expand."""
    pytest.importorskip("backpack")
    problem = PROBLEMS[case_id]()
    answer = load_candidate("backpack-kflr").compute(problem, TYPE2)
    flavours = {
        approx: compute_kfac(problem.model, problem.loss_func, problem.batches, kfac_approx=approx)
        for approx in ("expand", "reduce")
    }
    positions = output_positions(problem)
    assert positions and set(positions) < set(problem.layers)
    for layer in problem.layers:
        expand = flavours["expand"][layer]
        T = positions.get(layer, 1)
        B = flavours["reduce" if layer in positions else "expand"][layer].B
        expected = KroneckerFactors(T * expand.A, B, "separate").to_dense()
        error = relative_error(answer[layer].to_dense(), expected)
        assert error < 1e-10, (case_id, layer, T, error)


def test_laplace_backpack_hands_on_backpacks_conv1d_and_refuses_conv3d():
    """laplace-torch 0.3 passes Conv1d through its BackPACK backend unchanged; its
    ``Kron.init_from_model`` raises for a Conv3d weight (five axes), which is refused."""
    pytest.importorskip("laplace")
    laplace = load_candidate("laplace-backpack")
    problem = PROBLEMS["cnn1d[tanh-ce]"]()
    through_laplace = Session(laplace).call(problem, TYPE2)  # in the tutorial's scale
    direct = Session(load_candidate("backpack-kflr")).call(problem, TYPE2)
    for layer in problem.layers:
        error = relative_error(through_laplace[layer].to_dense(), direct[layer].to_dense())
        assert error < 1e-10, (layer, error)
    cnn3d = CNN3D.make_problem()
    assert "Conv3d" in laplace.capabilities.unsupported(cnn3d, TYPE2)
    with pytest.raises(NotSupported, match="layer '0' is a Conv3d"):
        laplace.compute(cnn3d, TYPE2)
