"""Grouped convolutions (issue 22): ``kfac_ref`` and the oracle against an equivalent network
that shares none of their grouping code, and the order of the assembled block.

The equivalent of a convolution with ``groups = G`` is ``G`` ungrouped convolutions, group
``g`` on the input channels ``[g C_in / G, (g + 1) C_in / G)`` with weight rows
``[g C_out / G, (g + 1) C_out / G)`` of the grouped weight, their outputs concatenated along
the channels. KFAC of the grouped layer is that of the ``G`` layers, one pair per group; the
exact block of the grouped layer is the joint exact block over the ``G`` layers' parameters,
put in the grouped layer's order (every weight, then every bias), computed here by
``torch.func`` from the Jacobian of the whole output (not by the oracle's per-layer code).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from zoo import GroupedConvFirstGroupInputs

from kfac_conformance.cases.canonical import ALL_CASES, Case
from kfac_conformance.checks.base import CheckFailed
from kfac_conformance.contract.problem import Request
from kfac_conformance.execution.calling import validate_result
from kfac_conformance.execution.session import reference_compute
from kfac_conformance.fuzzing.exact_layers import exactness_map
from kfac_conformance.fuzzing.search import search
from kfac_conformance.oracle.blocks import exact_blocks
from kfac_conformance.reports.kill_matrix import FUZZ_EXAMPLES
from kfac_ref import compute_ekfac, compute_kfac
from kfac_ref.factors import EKFACFactors, GroupedFactors, KroneckerFactors

TOL = 1e-10
CONVOLUTIONS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def relative_error(approx: Tensor, exact: Tensor) -> float:
    scale = exact.norm().item()
    assert scale > 0, "comparison against a zero matrix is vacuous"
    return (approx - exact).norm().item() / scale


class SplitConv(nn.Module):
    """A grouped convolution as ``groups`` ungrouped ones on channel slices."""

    def __init__(self, grouped: nn.Module) -> None:
        super().__init__()
        groups, c_in, c_out = grouped.groups, grouped.in_channels, grouped.out_channels
        self.width = c_in // groups
        self.convs = nn.ModuleList()
        for g in range(groups):
            conv = type(grouped)(
                self.width,
                c_out // groups,
                grouped.kernel_size,
                stride=grouped.stride,
                padding=grouped.padding,
                dilation=grouped.dilation,
                bias=grouped.bias is not None,
            ).double()
            rows = slice(g * c_out // groups, (g + 1) * c_out // groups)
            with torch.no_grad():
                conv.weight.copy_(grouped.weight[rows])
                if grouped.bias is not None:
                    conv.bias.copy_(grouped.bias[rows])
            self.convs.append(conv)

    def forward(self, x: Tensor) -> Tensor:
        slices = x.split(self.width, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, slices, strict=True)], 1)


def _pair(dims: int, bias: bool = True) -> tuple[nn.Sequential, nn.Sequential, Tensor, Tensor]:
    """A grouped network (4 -> 6 channels in 2 groups, tanh, a 1x1 convolution) and its split
    equivalent, with data for MSE on every output position."""
    generator = torch.Generator().manual_seed(dims)
    conv = CONVOLUTIONS[dims]
    with torch.random.fork_rng():
        torch.manual_seed(dims)
        grouped = nn.Sequential(
            conv(4, 6, 2, padding=1, groups=2, bias=bias), nn.Tanh(), conv(6, 2, 1)
        ).double()
    split = nn.Sequential(SplitConv(grouped[0]), nn.Tanh(), grouped[2])
    X = torch.randn(3, 4, *(3,) * dims, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = torch.randn(grouped(X).shape, generator=generator, dtype=torch.float64)
    return grouped, split, X, y


SPLIT_LAYERS = ["0.convs.0", "0.convs.1"]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("flavour", ["expand", "reduce"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only", "mc"])
def test_kfac_ref_of_a_grouped_convolution_is_kfac_of_its_groups_as_separate_layers(
    dims: int, flavour: str, fisher_type: str
):
    grouped, split, X, y = _pair(dims)
    for bias in ("separate", "joint"):
        options = dict(fisher_type=fisher_type, kfac_approx=flavour, bias=bias, mc_samples=2)
        [whole] = compute_kfac(grouped, nn.MSELoss(), [(X, y)], layers=["0"], **options).values()
        parts = compute_kfac(split, nn.MSELoss(), [(X, y)], layers=SPLIT_LAYERS, **options)
        assert isinstance(whole, GroupedFactors) and len(whole.groups) == 2
        for group, layer in zip(whole.groups, SPLIT_LAYERS, strict=True):
            assert relative_error(group.to_dense(), parts[layer].to_dense()) < TOL


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ekfac_of_a_grouped_convolution_is_ekfac_of_its_groups_as_separate_layers(dims: int):
    grouped, split, X, y = _pair(dims)
    for bias in ("separate", "joint"):
        options = dict(kfac_approx="expand", bias=bias)  # reduce: A of rank N < its size
        [whole] = compute_ekfac(grouped, nn.MSELoss(), [(X, y)], layers=["0"], **options).values()
        parts = compute_ekfac(split, nn.MSELoss(), [(X, y)], layers=SPLIT_LAYERS, **options)
        assert all(isinstance(group, EKFACFactors) for group in whole.groups)
        for group, layer in zip(whole.groups, SPLIT_LAYERS, strict=True):
            assert relative_error(group.to_dense(), parts[layer].to_dense()) < TOL


def _joint_ggn_in_grouped_order(split: nn.Sequential, X: Tensor) -> Tensor:
    """``2 sum_n J_n^T J_n`` (MSE, sum reduction) over the split layers' parameters ordered
    like the grouped layer's: every group's weight, then every group's bias."""
    convs = split[0].convs
    names = [f"0.convs.{g}.weight" for g in range(len(convs))]
    names += [f"0.convs.{g}.bias" for g in range(len(convs))]
    params = dict(split.named_parameters())
    shapes = [params[name].shape for name in names]
    flat = torch.cat([params[name].detach().flatten() for name in names])

    def output(vector: Tensor) -> Tensor:
        pieces = dict(zip(names, vector.split([s.numel() for s in shapes]), strict=True))
        chosen = {
            name: piece.reshape(s) for (name, piece), s in zip(pieces.items(), shapes, strict=True)
        }
        return torch.func.functional_call(split, {**params, **chosen}, (X,)).flatten()

    jacobian = torch.func.jacrev(output)(flat)
    return 2 * jacobian.T @ jacobian


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_oracle_of_a_grouped_convolution_is_the_joint_block_of_its_groups(dims: int):
    grouped, split, X, y = _pair(dims)
    block = exact_blocks(grouped, nn.MSELoss(reduction="sum"), [(X, y)], ["0"], "ggn")["0"]
    expected = _joint_ggn_in_grouped_order(split, X)
    assert relative_error(block, expected) < TOL
    # the groups interact through the tanh and the 1x1 convolution: not block-diagonal
    weight = grouped[0].weight.numel()
    assert block[: weight // 2, weight // 2 : weight].abs().max() > 1e-3


def _distinct_factors(groups: int, d_in: int, d_out: int, bias: str) -> GroupedFactors:
    generator = torch.Generator().manual_seed(7)
    size_A = d_in + (bias == "joint")
    return GroupedFactors(
        tuple(
            KroneckerFactors(
                torch.randn(size_A, size_A, generator=generator, dtype=torch.float64),
                torch.randn(d_out, d_out, generator=generator, dtype=torch.float64),
                bias,
            )
            for _ in range(groups)
        )
    )


@pytest.mark.parametrize("bias", ["none", "separate", "joint"])
def test_the_assembled_block_acts_on_weight_then_bias_group_by_group(bias: str):
    """The dense block times ``[V.flatten(), v_b]`` is each group's ``B_g [V_g | v_g] A_g^T``
    (joint) or ``B_g V_g A_g^T`` and ``B_g v_g`` (separate), put back in the weight's and the
    bias's own rows: the block is in the parameters' order, weight then bias."""
    groups, kernel, c_in, c_out = 3, (2, 2), 2, 4  # per group
    factors = _distinct_factors(groups, c_in * 4, c_out, bias)
    generator = torch.Generator().manual_seed(8)
    V = torch.randn(groups * c_out, c_in, *kernel, generator=generator, dtype=torch.float64)
    v_b = torch.randn(groups * c_out, generator=generator, dtype=torch.float64)
    probe = torch.cat([V.flatten(), v_b]) if bias != "none" else V.flatten()
    product = factors.to_dense() @ probe

    weight_parts, bias_parts = [], []
    for g, group in enumerate(factors.groups):
        rows = slice(g * c_out, (g + 1) * c_out)
        V_g = V[rows].reshape(c_out, -1)
        if bias == "joint":
            joint = group.B @ torch.cat([V_g, v_b[rows, None]], dim=1) @ group.A.T
            weight_parts.append(joint[:, :-1].flatten())
            bias_parts.append(joint[:, -1])
        else:
            weight_parts.append((group.B @ V_g @ group.A.T).flatten())
            bias_parts.append(group.B @ v_b[rows])
    expected = torch.cat(weight_parts + (bias_parts if bias != "none" else []))
    assert relative_error(product, expected) < TOL


def test_grouped_factors_refuse_mixed_groups_with_a_message():
    kron = KroneckerFactors(torch.eye(2), torch.eye(2), "separate")
    with pytest.raises(ValueError, match="one bias mode"):
        GroupedFactors((kron, KroneckerFactors(torch.eye(2), torch.eye(2), "joint")))
    with pytest.raises(ValueError, match="non-empty"):
        GroupedFactors(())
    ekfac = EKFACFactors(torch.eye(2), torch.eye(2), torch.ones(2, 2), "separate", torch.ones(2))
    with pytest.raises(TypeError, match="all be KroneckerFactors or all EKFACFactors"):
        GroupedFactors((kron, ekfac))


# --- where a grouped layer can be exact: its groups apart up to an MSE loss ------------------


@pytest.mark.parametrize(
    ("case_id", "layer"),
    [
        ("grouped-conv-expand[last-layer-2-groups]", "2"),
        ("grouped-conv-reduce[depthwise-mean-pool]", "1"),
    ],
)
def test_the_exact_grouped_cases_have_no_cross_group_ggn_blocks(case_id: str, layer: str):
    """The premise of their exactness claims (conformance/cases/grouped.py)."""
    problem = ALL_CASES[case_id].make_problem(torch.float64)
    block = exact_blocks(problem.model, problem.loss_func, problem.batches, [layer], "ggn")[layer]
    module = problem.model.get_submodule(layer)
    [factors] = compute_kfac(
        problem.model, problem.loss_func, problem.batches, layers=[layer], bias="joint"
    ).values()
    inside = torch.zeros_like(block, dtype=torch.bool)
    for index in factors.parameter_indices():
        inside[index[:, None], index[None, :]] = True
    assert len(factors.groups) == module.groups > 1
    assert block[~inside].abs().max() <= TOL * block.abs().max()


def test_the_fuzzers_exactness_map_keeps_a_grouped_layer_only_where_its_groups_stay_apart():
    grouped_last = [["conv1d", 2, 2, 1, 1, 0, 1, True], ["conv1d", 2, 4, 1, 1, 0, 1, True, 2]]
    grouped_first = [["conv1d", 2, 2, 1, 1, 0, 1, True, 2], ["conv1d", 2, 4, 1, 1, 0, 1, True]]
    assert exactness_map(grouped_last, (3, 2, 4), "mse", 3) == {
        "type-2/expand": ("0", "1")
    }  # fmt: skip
    assert exactness_map(grouped_first, (3, 2, 4), "mse", 3) == {"type-2/expand": ("1",)}
    assert exactness_map(grouped_last, (1, 2, 1), "mse", 1) == {
        "type-2/expand": ("0", "1"),
        "type-2/reduce": ("0", "1"),
        "empirical/expand": ("0",),
        "empirical/reduce": ("0",),
    }
    assert exactness_map(grouped_last, (1, 2, 1), "ce", 1) == {
        key: ("0",)
        for key in ("type-2/expand", "type-2/reduce", "empirical/expand", "empirical/reduce")
    }
    for architecture, shape, loss in (
        (grouped_last, (3, 2, 4), "mse"),
        (grouped_first, (3, 2, 4), "mse"),
        (grouped_last, (1, 2, 1), "mse"),
    ):
        case = Case("grouped-map", architecture, shape, loss, seed=5)
        problem = case.make_problem(torch.float64)
        exact_map = exactness_map(architecture, shape, loss, shape[0])
        for key, layers in exact_map.items():
            fisher_type, flavour = key.split("/")
            curvature = "ggn" if fisher_type == "type-2" else "empirical"
            exact = exact_blocks(
                problem.model, problem.loss_func, problem.batches, layers, curvature
            )
            kfac = compute_kfac(
                problem.model, problem.loss_func, problem.batches, layers=layers,
                fisher_type=fisher_type, kfac_approx=flavour, bias="joint",
            )  # fmt: skip
            for layer in layers:
                assert relative_error(kfac[layer].to_dense(), exact[layer]) < TOL, (key, layer)


def test_the_fuzzer_kills_the_grouped_mutant_with_a_failure():
    outcome = search(
        GroupedConvFirstGroupInputs(), FUZZ_EXAMPLES, seed=0, database=None, max_failures=1
    )
    assert outcome.failures, f"survived {outcome.examples} examples"
    [failure] = outcome.failures
    assert failure.result.status == "failed"
    assert any(spec[0].startswith("conv") and len(spec) > 8 for spec in failure.case.architecture)


def test_a_grouped_layer_needs_one_result_per_group_and_is_told_so():
    problem = ALL_CASES["grouped-conv-reduce[depthwise-mean-pool]"].make_problem(torch.float64)
    request = Request(kfac_approx="reduce", bias="joint")
    answer = reference_compute(problem, request)
    assert validate_result(answer, problem, request, []).keys() == answer.keys()
    one_pair = dict(answer, **{"1": answer["1"].groups[0]})
    with pytest.raises(CheckFailed, match="groups=4 needs GroupedFactors of 4 KroneckerFactors"):
        validate_result(one_pair, problem, request, [])
    three_groups = dict(answer, **{"1": GroupedFactors(answer["1"].groups[:3])})
    with pytest.raises(CheckFailed, match="got GroupedFactors of 3 groups"):
        validate_result(three_groups, problem, request, [])
    widened = KroneckerFactors(torch.eye(5, dtype=torch.float64), answer["1"].groups[1].B, "joint")
    wrong_shape = dict(answer, **{"1": GroupedFactors((answer["1"].groups[0], widened) * 2)})
    with pytest.raises(CheckFailed, match=r"layer '1', group 1, factor A: shape expected \(4, 4\)"):
        validate_result(wrong_shape, problem, request, [])
