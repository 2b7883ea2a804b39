"""The reference's contract: what it rejects (and how it says so), and what it leaves alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from kfac_conformance.cases.canonical import ALL_CASES
from kfac_ref import KroneckerFactors, compute_kfac


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def regression_data(n: int = 5, d_in: int = 4, d_out: int = 2):
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(n, d_in, generator=generator, dtype=torch.float64)
    return [(X, torch.randn(n, d_out, generator=generator, dtype=torch.float64))]


def class_data(n: int = 5, d_in: int = 4, classes: int = 2):
    generator = torch.Generator().manual_seed(2)
    X = torch.randn(n, d_in, generator=generator, dtype=torch.float64)
    return [(X, torch.randint(classes, (n,), generator=generator))]


MSE = nn.MSELoss()
CE = nn.CrossEntropyLoss()


BAD_SETTINGS = [
    (
        "L1Loss",
        lambda: (mlp(), nn.L1Loss(), regression_data(), {}),
        NotImplementedError,
        "L1Loss is not supported",
    ),
    (
        "reduction-none",
        lambda: (mlp(), nn.MSELoss(reduction="none"), regression_data(), {}),
        NotImplementedError,
        "reduction='none'",
    ),
    (
        "label-smoothing",
        lambda: (mlp(), nn.CrossEntropyLoss(label_smoothing=0.1), class_data(), {}),
        NotImplementedError,
        "label_smoothing",
    ),
    (
        "class-weights",
        lambda: (
            mlp(),
            nn.CrossEntropyLoss(weight=torch.ones(2, dtype=torch.float64)),
            class_data(),
            {},
        ),
        NotImplementedError,
        "class weights",
    ),
    (
        "pos-weight",
        lambda: (
            mlp(),
            nn.BCEWithLogitsLoss(pos_weight=torch.ones(2, dtype=torch.float64)),
            regression_data(),
            {},
        ),
        NotImplementedError,
        "pos_weight",
    ),
    (
        "batchnorm",
        lambda: (
            nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double(),
            MSE,
            regression_data(),
            {},
        ),
        NotImplementedError,
        r"layer '1' \(BatchNorm1d\) is not supported",
    ),
    (
        "layernorm",
        lambda: (
            nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)).double(),
            MSE,
            regression_data(),
            {},
        ),
        NotImplementedError,
        r"layer '0' \(LayerNorm\) is not supported",
    ),
    (
        "conv2d-padding-mode",
        lambda: (
            nn.Sequential(
                nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten()
            ).double(),
            MSE,
            [
                (
                    torch.zeros(3, 2, 2, 2, dtype=torch.float64),
                    torch.zeros(3, 8, dtype=torch.float64),
                )
            ],
            {},
        ),
        NotImplementedError,
        "padding_mode='reflect'",
    ),
    (
        "unknown-layer",
        lambda: (mlp(), MSE, regression_data(), {"layers": ["0", "7"]}),
        ValueError,
        r"\['7'\] are not modules",
    ),
    (
        "no-layers",
        lambda: (mlp(), MSE, regression_data(), {"layers": []}),
        ValueError,
        "no layers to compute KFAC for",
    ),
    (
        "layers-as-string",
        lambda: (mlp(), MSE, regression_data(), {"layers": "0"}),
        ValueError,
        "not a single string",
    ),
    (
        "layer-without-parameters",
        lambda: (mlp(), MSE, regression_data(), {"layers": ["1"]}),
        NotImplementedError,
        r"layer '1' \(Tanh\) is not supported",
    ),
    (
        "fisher-type",
        lambda: (mlp(), MSE, regression_data(), {"fisher_type": "type-3"}),
        ValueError,
        "fisher_type must be one of .* got 'type-3'",
    ),
    (
        "kfac-approx",
        lambda: (mlp(), MSE, regression_data(), {"kfac_approx": "shrink"}),
        ValueError,
        "kfac_approx must be one of .* got 'shrink'",
    ),
    (
        "bias",
        lambda: (mlp(), MSE, regression_data(), {"bias": "both"}),
        ValueError,
        "bias must be one of .* got 'both'",
    ),
    (
        "mc-samples-zero",
        lambda: (mlp(), MSE, regression_data(), {"mc_samples": 0}),
        ValueError,
        "mc_samples must be a positive integer, got 0",
    ),
    (
        "mc-samples-float",
        lambda: (mlp(), MSE, regression_data(), {"mc_samples": 2.0}),
        ValueError,
        "mc_samples must be a positive integer, got 2.0",
    ),
    (
        "mc-samples-bool",
        lambda: (mlp(), MSE, regression_data(), {"mc_samples": True}),
        ValueError,
        "mc_samples must be a positive integer, got True",
    ),
    ("no-batches", lambda: (mlp(), MSE, [], {}), ValueError, "holds no batches"),
    (
        "only-empty-batches",
        lambda: (
            mlp(),
            MSE,
            [(torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64))],
            {},
        ),
        ValueError,
        "holds no batches",
    ),
    (
        "not-a-pair",
        lambda: (mlp(), MSE, [torch.zeros(3, 4, dtype=torch.float64)], {}),
        ValueError,
        "batch 0 of data must be a pair",
    ),
    (
        "mismatched-sizes",
        lambda: (
            mlp(),
            MSE,
            [(torch.zeros(4, 4, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))],
            {},
        ),
        ValueError,
        "X has 4 data but y has 3",
    ),
    (
        "mse-target-shape",
        lambda: (
            mlp(),
            MSE,
            [(torch.zeros(4, 4, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))],
            {},
        ),
        ValueError,
        r"targets of the output's shape \(4, 2\), got \(4, 3\)",
    ),
    (
        "ce-label-too-large",
        lambda: (
            mlp(),
            CE,
            [(torch.zeros(3, 4, dtype=torch.float64), torch.tensor([0, 2, 1]))],
            {},
        ),
        ValueError,
        r"must lie in \[0, 2\), got \[0, 2\]",
    ),
    (
        "ce-label-negative",
        lambda: (
            mlp(),
            CE,
            [(torch.zeros(3, 4, dtype=torch.float64), torch.tensor([0, -1, 1]))],
            {},
        ),
        ValueError,
        r"must lie in \[0, 2\), got \[-1, 1\]",
    ),
    (
        "ce-float-labels",
        lambda: (
            mlp(),
            CE,
            [(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))],
            {},
        ),
        ValueError,
        "integer class labels .* got torch.float64",
    ),
    (
        "ce-probability-targets",
        lambda: (
            mlp(),
            CE,
            [(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.int64))],
            {},
        ),
        ValueError,
        r"of shape \(3,\) .* shape \(3, 2\)",
    ),
    (
        "weight-tying",
        lambda: (
            tied_model(),
            MSE,
            [(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64))],
            {},
        ),
        NotImplementedError,
        "called more than once",
    ),
    (
        "inplace-relu",
        lambda: (
            nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)).double(),
            MSE,
            regression_data(),
            {},
        ),
        NotImplementedError,
        r"layers \['0'\] are modified in place",
    ),
    (
        "frozen",
        lambda: (frozen_model(), MSE, regression_data(), {}),
        ValueError,
        r"layer '2' has parameters with requires_grad=False: \['bias'\]",
    ),
    (
        "layer-not-called",
        lambda: (skipping_model(), MSE, regression_data(), {}),
        ValueError,
        r"layers \['skipped'\] were not called",
    ),
]


def tied_model() -> nn.Module:
    torch.manual_seed(0)
    shared = nn.Linear(3, 3).double()
    return nn.Sequential(shared, nn.Tanh(), shared)


def frozen_model() -> nn.Module:
    model = mlp()
    model[2].bias.requires_grad_(False)
    return model


class Skipping(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 2).double()
        self.skipped = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.used(x)


def skipping_model() -> nn.Module:
    torch.manual_seed(0)
    return Skipping()


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [pytest.param(make, error, match, id=name) for name, make, error, match in BAD_SETTINGS],
)
def test_bad_input_raises_naming_the_problem(make, error, match):
    model, loss_func, data, kwargs = make()
    with pytest.raises(error, match=match):
        compute_kfac(model, loss_func, data, **kwargs)


def test_the_bad_models_work_when_the_problem_is_removed():
    """The error cases above fail for the stated reason, not because the setup is broken."""
    model, _, data, _ = BAD_SETTINGS[0][1]()
    assert set(compute_kfac(model, MSE, data)) == {"0", "2"}
    assert set(compute_kfac(mlp(), CE, class_data())) == {"0", "2"}
    unfrozen = frozen_model()
    unfrozen[2].bias.requires_grad_(True)
    assert set(compute_kfac(unfrozen, MSE, regression_data())) == {"0", "2"}
    assert set(compute_kfac(skipping_model(), MSE, regression_data(), layers=["used"])) == {"used"}
    relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    assert set(compute_kfac(relu, MSE, regression_data())) == {"0", "2"}


def snapshot(model: nn.Module) -> dict:
    """Everything compute_kfac must leave as it found it."""
    return {
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()
        },
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
        "hooks": {
            name: tuple(
                len(getattr(m, attribute))
                for attribute in (
                    "_forward_hooks",
                    "_forward_pre_hooks",
                    "_backward_hooks",
                    "_backward_pre_hooks",
                    "_forward_hooks_with_kwargs",
                    "_state_dict_hooks",
                )
            )
            for name, m in model.named_modules()
        },
        "global_hooks": (
            len(module_globals._global_forward_hooks),
            len(module_globals._global_forward_pre_hooks),
            len(module_globals._global_backward_hooks),
        ),
        "rng": torch.get_rng_state(),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    assert before["params"].keys() == after["params"].keys()
    for name in before["params"]:
        assert torch.equal(before["params"][name], after["params"][name]), f"{name} changed"
        grad_before, grad_after = before["grads"][name], after["grads"][name]
        assert (grad_before is None) == (grad_after is None), f"{name}.grad appeared/vanished"
        if grad_before is not None:
            assert torch.equal(grad_before, grad_after), f"{name}.grad changed"
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["global_hooks"] == after["global_hooks"]
    assert torch.equal(before["rng"], after["rng"]), "the global RNG state changed"


def prepared(model: nn.Module, train: bool) -> nn.Module:
    """Give some parameters a .grad (and leave others without) and set the training flag."""
    params = list(model.parameters())
    for index, param in enumerate(params):
        if index % 2 == 0:
            param.grad = torch.full_like(param, 0.5 + index)
    model.train(train)
    if not train:
        model[0].train()  # a mixed flag pattern must survive too
    return model


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical", "forward-only"])
@pytest.mark.parametrize("case_id", ["mlp[tanh-ce-batch]", "cnn[relu-ce]"])
def test_no_side_effects_and_repeatable(case_id: str, fisher_type: str, train: bool):
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    model = prepared(problem.model, train)
    torch.manual_seed(99)
    before = snapshot(model)
    kwargs = {"fisher_type": fisher_type, "mc_samples": 2, "bias": "joint"}
    first = compute_kfac(model, problem.loss_func, problem.batches, **kwargs)
    assert_unchanged(before, snapshot(model))
    second = compute_kfac(model, problem.loss_func, problem.batches, **kwargs)
    assert list(first) == list(second) == problem.layers
    for layer in problem.layers:
        assert torch.equal(first[layer].A, second[layer].A), f"layer {layer}: A not repeatable"
        assert torch.equal(first[layer].B, second[layer].B), f"layer {layer}: B not repeatable"
        assert first[layer].bias == second[layer].bias == "joint"


def bad_second_batch(problem):
    X, y = problem.batches[0]
    return [(X, y), (X[:3], y[:2])]


def bad_second_labels(problem):
    X, y = problem.batches[0]
    return [(X, y), (X, torch.full_like(y, 99))]


def generator_that_raises(problem):
    yield problem.batches[0]
    raise RuntimeError("data loader failed")


MIDWAY_FAILURES = [
    ("mismatched-second-batch", bad_second_batch, ValueError, "batch 1: X has 3 data but y has 2"),
    ("labels-out-of-range-second-batch", bad_second_labels, ValueError, "must lie in"),
    ("data-loader-raises", generator_that_raises, RuntimeError, "data loader failed"),
]


@pytest.mark.parametrize(
    ("make_data", "error", "match"),
    [pytest.param(make, error, match, id=name) for name, make, error, match in MIDWAY_FAILURES],
)
def test_no_side_effects_when_raising_midway(make_data, error, match):
    problem = ALL_CASES["mlp[tanh-ce-batch]"].make_problem(torch.float64)
    model = prepared(problem.model, train=False)
    torch.manual_seed(5)
    before = snapshot(model)
    with pytest.raises(error, match=match):
        compute_kfac(model, problem.loss_func, make_data(problem), fisher_type="mc")
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize(
    ("make_model", "data", "match"),
    [
        pytest.param(
            tied_model,
            [(torch.ones(3, 3, dtype=torch.float64), torch.ones(3, 3, dtype=torch.float64))],
            "called more than once",
            id="weight-tying",
        ),
        pytest.param(
            lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)).double(),
            regression_data(),
            "modified in place",
            id="inplace-relu",
        ),
    ],
)
def test_hooks_are_removed_when_the_forward_pass_fails(make_model, data, match):
    model = make_model()
    model.train()
    before = snapshot(model)
    with pytest.raises(NotImplementedError, match=match):
        compute_kfac(model, MSE, data)
    assert_unchanged(before, snapshot(model))


# KroneckerFactors.to_dense, against blocks built entry by entry.
A_JOINT = torch.tensor([[4.0, 1.0, 2.0], [1.0, 3.0, 5.0], [2.0, 5.0, 7.0]], dtype=torch.float64)
B_SMALL = torch.tensor([[2.0, -1.0], [-1.0, 3.0]], dtype=torch.float64)


def test_to_dense_joint_is_the_block_over_weight_then_bias():
    """Parameters [W00, W01, W10, W11, b0, b1]; A's last row/column belongs to the bias."""
    dense = KroneckerFactors(A_JOINT, B_SMALL, "joint").to_dense()
    # the entry for parameters (i, a) and (j, b): B[i, j] * A[a, b], with a = 2 for the bias
    coordinates = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (1, 2)]
    expected = torch.tensor(
        [[B_SMALL[i, j] * A_JOINT[a, b] for j, b in coordinates] for i, a in coordinates],
        dtype=torch.float64,
    )
    assert torch.equal(dense, expected)
    # spelled out: the W00 row, and the b1 row
    assert dense[0].tolist() == [8.0, 2.0, -4.0, -1.0, 4.0, -2.0]
    assert dense[5].tolist() == [-2.0, -5.0, 6.0, 15.0, -7.0, 21.0]


def test_to_dense_joint_matches_a_permutation_of_kron_over_w_b():
    """kron(B, A) is over [W | b] flattened row-major; to_dense is its reordering."""
    generator = torch.Generator().manual_seed(3)
    d_out, d_in = 3, 4
    A = torch.randn(d_in + 1, d_in + 1, generator=generator, dtype=torch.float64)
    B = torch.randn(d_out, d_out, generator=generator, dtype=torch.float64)
    kron = torch.kron(B, A)
    # position in [W | b].flatten() of every entry of [W.flatten(), b]
    weight_positions = [i * (d_in + 1) + a for i in range(d_out) for a in range(d_in)]
    bias_positions = [i * (d_in + 1) + d_in for i in range(d_out)]
    order = weight_positions + bias_positions
    permutation = torch.zeros(len(order), len(order), dtype=torch.float64)
    for row, position in enumerate(order):
        permutation[row, position] = 1.0
    expected = permutation @ kron @ permutation.T
    assert torch.equal(KroneckerFactors(A, B, "joint").to_dense(), expected)


def test_to_dense_separate_and_none():
    A = A_JOINT[:2, :2]
    separate = KroneckerFactors(A, B_SMALL, "separate").to_dense()
    assert torch.equal(separate, torch.block_diag(torch.kron(B_SMALL, A), B_SMALL))
    assert torch.count_nonzero(separate[:4, 4:]) == 0
    assert torch.equal(KroneckerFactors(A, B_SMALL).to_dense(), torch.kron(B_SMALL, A))


@pytest.mark.parametrize(
    ("A", "B", "bias", "match"),
    [
        (torch.ones(2, 3), torch.ones(2, 2), "none", "factor A must be a square matrix"),
        (torch.ones(2, 2), torch.ones(2), "none", "factor B must be a square matrix"),
        (torch.ones(2, 2), torch.ones(2, 2), "shared", "bias must be one of"),
    ],
)
def test_kronecker_factors_validate(A, B, bias, match):
    with pytest.raises(ValueError, match=match):
        KroneckerFactors(A, B, bias)


@pytest.mark.parametrize("bias", ["separate", "joint"])
def test_result_shapes_and_bias_modes(bias: str):
    problem = ALL_CASES["cnn[tanh-mse-feature-map]"].make_problem(torch.float64)
    kfac = compute_kfac(problem.model, problem.loss_func, problem.batches, bias=bias)
    for layer in problem.layers:
        module = problem.model.get_submodule(layer)
        d_in = module.weight[0].numel()
        has_bias = module.bias is not None
        expected_mode = bias if has_bias else "none"
        assert kfac[layer].bias == expected_mode
        assert kfac[layer].A.shape[0] == d_in + (has_bias and bias == "joint")
        assert kfac[layer].B.shape[0] == module.weight.shape[0]
        assert kfac[layer].A.dtype == kfac[layer].B.dtype == torch.float64
        parameter_count = sum(p.numel() for p in module.parameters(recurse=False))
        assert kfac[layer].to_dense().shape == (parameter_count, parameter_count)


def test_a_model_that_draws_random_numbers_leaves_the_global_rng_alone():
    """Dropout in train mode draws from the global RNG; KFAC must not advance the caller's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    before = torch.get_rng_state()
    first = compute_kfac(model, nn.MSELoss(), [(X, y)])
    assert torch.equal(torch.get_rng_state(), before)
    second = compute_kfac(model, nn.MSELoss(), [(X, y)])
    assert torch.equal(first["0"].to_dense(), second["0"].to_dense())
