"""The exact oracle against computations that do not share its shortcuts.

The oracle assumes block-diagonality of the loss Hessian over data and works with vmap'ed
per-datum Jacobians; the checks here use full Hessians, full-batch Jacobians and per-datum
gradients taken one datum at a time.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from kfac_conformance.cases.architectures import MoveDim
from kfac_conformance.cases.canonical import ALL_CASES, CANONICAL_CASES
from kfac_conformance.oracle import blocks as oracle
from kfac_conformance.oracle.blocks import exact_blocks, layer_parameter_names

TOL = 1e-10
# torch.func.hessian's forward mode loads torch's jit-scripted decompositions once
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)


def relative_error(approx: Tensor, exact: Tensor) -> float:
    scale = exact.norm().item()
    assert scale > 0, "comparison against a zero matrix is vacuous"
    return (approx - exact).norm().item() / scale


def concatenated(batches):
    return torch.cat([X for X, _ in batches]), torch.cat([y for _, y in batches])


def flat_parameters(model: nn.Module, names: list[str]) -> Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[name].detach().flatten() for name in names])


def unflatten(model: nn.Module, names: list[str], flat: Tensor) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    result, offset = {}, 0
    for name in names:
        size = params[name].numel()
        result[name] = flat[offset : offset + size].reshape(params[name].shape)
        offset += size
    return result


def output_function(model: nn.Module, names: list[str], X: Tensor):
    """theta (flat, over ``names``) -> model output on X, the other parameters held fixed."""
    fixed = {name: p.detach() for name, p in model.named_parameters()}
    return lambda flat: functional_call(model, {**fixed, **unflatten(model, names, flat)}, (X,))


def hessian_block(model, loss_func, batches, layer: str) -> Tensor:
    X, y = concatenated(batches)
    names = layer_parameter_names(model, layer)
    output_of = output_function(model, names, X)
    hessian = torch.func.hessian(lambda flat: loss_func(output_of(flat), y))
    return hessian(flat_parameters(model, names))


def last_layer(case_id: str) -> str:
    return ALL_CASES[case_id].make_problem().layers[-1]


# (a) the output is linear in the last layer's parameters, so there the Hessian is the GGN
LAST_LAYER_CASES = [
    "mlp[tanh-ce-batch]",
    "cnn[relu-ce]",
    "cnn[tanh-mse-feature-map]",
    "sequence[tanh-ce-per-position]",
    "sequence[sigmoid-bce-mean-pool]",
    "one-datum-mlp[sigmoid-bce-mean]",
    "one-datum-mlp[tanh-ce-sum]",
]


@pytest.mark.parametrize("case_id", LAST_LAYER_CASES)
def test_ggn_of_last_layer_is_its_hessian(case_id: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    layer = problem.layers[-1]
    ggn = exact_blocks(problem.model, problem.loss_func, problem.batches, [layer], "ggn")[layer]
    hessian = hessian_block(problem.model, problem.loss_func, problem.batches, layer)
    error = relative_error(ggn, hessian)
    assert error < TOL, f"{case_id} layer {layer}: {error:.3e}"


@pytest.mark.parametrize("case_id", ["mlp[tanh-ce-batch]", "sequence[sigmoid-bce-mean-pool]"])
def test_ggn_of_a_hidden_layer_is_not_its_hessian(case_id: str):
    """The check above can fail: inside a nonlinear network GGN and Hessian differ."""
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    layer = problem.layers[0]
    ggn = exact_blocks(problem.model, problem.loss_func, problem.batches, [layer], "ggn")[layer]
    hessian = hessian_block(problem.model, problem.loss_func, problem.batches, layer)
    assert relative_error(ggn, hessian) > 1e-3


# (b) a deep linear network's output is linear in each single layer's parameters
LINEAR_CASES = [
    case
    for case in CANONICAL_CASES
    if not any(spec[0] in ("tanh", "sigmoid", "relu") for spec in case.architecture)
]


def test_there_are_deep_linear_cases():
    assert len(LINEAR_CASES) >= 8, [case.id for case in LINEAR_CASES]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda case: case.id)
def test_ggn_of_deep_linear_network_is_the_hessian(case):
    problem = case.make_problem(torch.float64)
    ggn = exact_blocks(problem.model, problem.loss_func, problem.batches, problem.layers, "ggn")
    for layer in problem.layers:
        hessian = hessian_block(problem.model, problem.loss_func, problem.batches, layer)
        error = relative_error(ggn[layer], hessian)
        assert error < TOL, f"{case.id} layer {layer}: {error:.3e}"


# (c) brute force: G = J^T H J with the full-batch Jacobian and the full output Hessian
def tiny_problem(kind: str, reduction: str):
    generator = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    if kind == "ce-sequence":
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3), MoveDim(-1, 1))
        X = torch.randn(4, 2, 3, generator=generator)
    elif kind == "mse-conv":
        model = nn.Sequential(nn.Conv2d(2, 2, 2), nn.Sigmoid(), nn.Conv2d(2, 2, 1))
        X = torch.randn(3, 2, 3, 3, generator=generator)
    else:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
        X = torch.randn(5, 3, generator=generator)
    model, X = model.double(), X.double()
    with torch.no_grad():
        output = model(X)
    if kind.startswith("ce"):
        loss_func = nn.CrossEntropyLoss(reduction=reduction)
        y = torch.randint(
            output.shape[1], (output.shape[0], *output.shape[2:]), generator=generator
        )
    elif kind == "bce":
        loss_func = nn.BCEWithLogitsLoss(reduction=reduction)
        y = (torch.rand(output.shape, generator=generator) < 0.5).double()
    else:
        loss_func = nn.MSELoss(reduction=reduction)
        y = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return model, loss_func, X, y, layers


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["mse", "mse-conv", "ce", "ce-sequence", "bce"])
def test_ggn_equals_brute_force_full_jacobian(kind: str, reduction: str):
    model, loss_func, X, y, layers = tiny_problem(kind, reduction)
    names = [name for name, _ in model.named_parameters()]
    theta = flat_parameters(model, names)
    output_of = output_function(model, names, X)
    output = output_of(theta).detach()
    J = torch.autograd.functional.jacobian(lambda flat: output_of(flat).flatten(), theta)
    H = torch.autograd.functional.hessian(
        lambda flat_output: loss_func(flat_output.reshape(output.shape), y), output.flatten()
    )
    assert J.shape == (output.numel(), theta.numel()) and H.shape == (output.numel(),) * 2
    G = J.T @ H @ J
    blocks = exact_blocks(model, loss_func, [(X, y)], layers, "ggn")
    offset = 0
    for layer in layers:
        size = sum(p.numel() for p in model.get_submodule(layer).parameters())
        brute = G[offset : offset + size, offset : offset + size]
        offset += size
        error = relative_error(blocks[layer], brute)
        assert error < TOL, f"{kind}-{reduction} layer {layer}: {error:.3e}"
    assert offset == theta.numel()


# (d) and (e): per-datum gradients, one datum (and one label) at a time
def tutorial_criterion(loss_func: nn.Module, output: Tensor, labels: Tensor) -> Tensor:
    """sum_n c_n with the tutorial's criterion: half the squared error for MSE (its examples
    "Square loss" and "Cross-entropy loss"), the summed loss otherwise."""
    summed = type(loss_func)(reduction="sum")(output, labels)
    return summed / 2 if isinstance(loss_func, nn.MSELoss) else summed


def reduction_factor(loss_func: nn.Module, X: Tensor, y: Tensor, model: nn.Module) -> float:
    """R with L = R sum_n c_n, measured as L / sum_n c_n (independent of any counting)."""
    with torch.no_grad():
        output = model(X)
        return (loss_func(output, y) / tutorial_criterion(loss_func, output, y)).item()


def per_datum_gradient(model, loss_func, x: Tensor, label: Tensor, layers) -> Tensor:
    """Gradient of c_n (the tutorial's criterion of one datum) wrt the layers' parameters."""
    params = [p for layer in layers for p in model.get_submodule(layer).parameters(recurse=False)]
    c_n = tutorial_criterion(loss_func, model(x.unsqueeze(0)), label.unsqueeze(0))
    return torch.cat([g.flatten() for g in torch.autograd.grad(c_n, params)])


def split_by_layer(matrix: Tensor, model: nn.Module, layers) -> dict[str, Tensor]:
    blocks, offset = {}, 0
    for layer in layers:
        size = sum(p.numel() for p in model.get_submodule(layer).parameters(recurse=False))
        blocks[layer] = matrix[offset : offset + size, offset : offset + size]
        offset += size
    return blocks


EF_CASES = [
    "mlp[tanh-ce-batch]",
    "cnn[relu-ce]",
    "cnn[tanh-mse-feature-map]",
    "sequence[tanh-ce-per-position]",
    "sequence[sigmoid-bce-mean-pool]",
    "deep-linear[mse-mean-3batches]",
    "one-datum-mlp[tanh-bce-mean]",
]


@pytest.mark.parametrize("case_id", EF_CASES)
def test_empirical_fisher_from_per_datum_gradients(case_id: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    model, loss_func = problem.model, problem.loss_func
    X, y = concatenated(problem.batches)
    R = reduction_factor(loss_func, X, y, model)
    total = 0.0
    for n in range(X.shape[0]):
        # l_n = R c_n is datum n's contribution to L; E = (1/R) sum_n grad l_n grad l_n^T
        grad_l = R * per_datum_gradient(model, loss_func, X[n], y[n], problem.layers)
        total = total + torch.outer(grad_l, grad_l) / R
    brute = split_by_layer(total, model, problem.layers)
    blocks = exact_blocks(model, loss_func, problem.batches, problem.layers, "empirical")
    for layer in problem.layers:
        error = relative_error(blocks[layer], brute[layer])
        assert error < TOL, f"{case_id} layer {layer}: {error:.3e}"


def sampled_labels(case_id: str, batches, M: int, generator: torch.Generator) -> list[Tensor]:
    loss = ALL_CASES[case_id].loss
    samples = []
    for _, y in batches:
        shape = (M, *y.shape)
        if loss == "ce":
            samples.append(torch.randint(int(y.max()) + 1, shape, generator=generator))
        elif loss == "bce":
            samples.append((torch.rand(shape, generator=generator) < 0.5).double())
        else:
            samples.append(torch.randn(shape, generator=generator, dtype=torch.float64))
    return samples


MC_CASES = [
    "mlp[tanh-ce-batch]",
    "cnn[tanh-mse-feature-map]",
    "sequence[tanh-ce-per-position]",
    "sequence[sigmoid-bce-mean-pool]",
    "deep-linear[mse-mean-3batches]",
]


@pytest.mark.parametrize("case_id", MC_CASES)
def test_mc_fisher_with_given_samples_from_per_datum_gradients(case_id: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    model, loss_func = problem.model, problem.loss_func
    M = 3
    samples = sampled_labels(case_id, problem.batches, M, torch.Generator().manual_seed(4))
    X, y = concatenated(problem.batches)
    Y = torch.cat(samples, dim=1)  # (M, N, ...)
    R = reduction_factor(loss_func, X, y, model)
    total = 0.0
    for n in range(X.shape[0]):
        for m in range(M):
            g = per_datum_gradient(model, loss_func, X[n], Y[m, n], problem.layers)
            total = total + (R / M) * torch.outer(g, g)
    brute = split_by_layer(total, model, problem.layers)
    blocks = exact_blocks(model, loss_func, problem.batches, problem.layers, "mc", samples)
    for layer in problem.layers:
        error = relative_error(blocks[layer], brute[layer])
        assert error < TOL, f"{case_id} layer {layer}: {error:.3e}"


# (f) several batches are one data set
@pytest.mark.parametrize("curvature", ["ggn", "empirical", "mc"])
@pytest.mark.parametrize("case_id", ["deep-linear[mse-mean-3batches]", "mlp[tanh-ce-batch]"])
def test_several_batches_equal_one_concatenated_batch(case_id: str, curvature: str):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    assert len(problem.batches) > 1
    samples = sampled_labels(case_id, problem.batches, 2, torch.Generator().manual_seed(5))
    whole = [concatenated(problem.batches)]
    args = (problem.model, problem.loss_func)
    several = exact_blocks(*args, problem.batches, problem.layers, curvature, samples)
    one = exact_blocks(*args, whole, problem.layers, curvature, [torch.cat(samples, dim=1)])
    for layer in problem.layers:
        error = relative_error(several[layer], one[layer])
        assert error < TOL, f"{case_id} {curvature} layer {layer}: {error:.3e}"


@pytest.mark.parametrize("curvature", ["ggn", "empirical"])
def test_chunking_over_data_does_not_change_the_blocks(curvature: str, monkeypatch):
    problem = ALL_CASES["cnn[relu-ce]"].make_problem(torch.float64)
    args = (problem.model, problem.loss_func, problem.batches, problem.layers, curvature)
    unchunked = exact_blocks(*args)
    monkeypatch.setattr(oracle, "_CHUNK_ELEMENTS", 1)  # one datum per chunk
    chunked = exact_blocks(*args)
    for layer in problem.layers:
        assert relative_error(chunked[layer], unchunked[layer]) < TOL


def test_blocks_leave_the_model_alone():
    problem = ALL_CASES["mlp[tanh-ce-batch]"].make_problem(torch.float64)
    before = {name: p.detach().clone() for name, p in problem.model.named_parameters()}
    exact_blocks(problem.model, problem.loss_func, problem.batches, problem.layers, "ggn")
    for name, p in problem.model.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None, name


# (g) bad arguments
def test_bad_curvature_raises():
    problem = ALL_CASES["mlp[tanh-ce-batch]"].make_problem(torch.float64)
    args = (problem.model, problem.loss_func, problem.batches, problem.layers)
    with pytest.raises(ValueError, match="curvature must be one of .* got 'hessian'"):
        exact_blocks(*args, "hessian")
    with pytest.raises(ValueError, match="MC Fisher needs sampled_labels"):
        exact_blocks(*args, "mc")


def test_no_data_raises():
    problem = ALL_CASES["mlp[tanh-ce-batch]"].make_problem(torch.float64)
    (X, y), *_ = problem.batches
    with pytest.raises(ValueError, match="the batches hold no data"):
        exact_blocks(problem.model, problem.loss_func, [(X[:0], y[:0])], problem.layers)
