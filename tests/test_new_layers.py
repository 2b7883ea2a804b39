"""Conv1d, Conv3d and Embedding (issue 22): the oracle and ``kfac_ref`` against equivalent
formulations that share none of their code paths, the claim a candidate makes for them, and
the fuzzer's kills of their zoo mutants.

- A Conv1d is the Conv2d of height one with the kernel ``(1, k)``; its weight ``(O, C, k)``
  flattens in the same order as the Conv2d's ``(O, C, 1, k)``, so both blocks are equal.
- A Conv3d is the Linear layer on its explicitly unfolded patches (gathered here by index
  loops, not by a convolution), shared over the output voxels.
- An Embedding is the bias-free Linear layer on one-hot inputs whose weight is its transpose:
  its block over ``weight.flatten()`` is that Linear layer's block permuted by the
  commutation matrix.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn
from zoo import Conv1dChannelsLastInPatch, Conv3dKernelAxesReversed, EmbeddingCountsForReduce

from kfac_conformance.cases.architectures import Pool
from kfac_conformance.contract.problem import Capabilities, Problem
from kfac_conformance.fuzzing.search import search
from kfac_conformance.oracle.blocks import exact_blocks
from kfac_conformance.reference_candidate import ReferenceCandidate
from kfac_conformance.reports.kill_matrix import FUZZ_EXAMPLES
from kfac_ref import compute_ekfac, compute_kfac

TOL = 1e-10
CURVATURES = ("ggn", "empirical")


def relative_error(approx: Tensor, exact: Tensor) -> float:
    scale = exact.norm().item()
    assert scale > 0, "comparison against a zero matrix is vacuous"
    return (approx - exact).norm().item() / scale


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def embedding_order(vocabulary: int, dim: int) -> Tensor:
    """Where each entry of an embedding's ``weight.flatten()`` (``vocabulary x dim``) sits in
    the row-major flattening of the equivalent Linear weight (``dim x vocabulary``)."""
    return torch.arange(dim * vocabulary).reshape(dim, vocabulary).T.flatten()


# --- Conv1d as the Conv2d of height one ----------------------------------------------------------


def _conv1d_pair() -> tuple[nn.Sequential, nn.Sequential]:
    torch.manual_seed(0)
    conv1d = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=2), nn.Tanh(), nn.Conv1d(3, 2, 2)
    ).double()
    conv2d = nn.Sequential(
        nn.Conv2d(2, 3, (1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2)),
        nn.Tanh(),
        nn.Conv2d(3, 2, (1, 2)),
    ).double()
    with torch.no_grad():
        for one, two in zip(conv1d.parameters(), conv2d.parameters(), strict=True):
            two.copy_(one.reshape(two.shape))
    return conv1d, conv2d


@pytest.mark.parametrize("curvature", CURVATURES)
def test_the_conv1d_oracle_is_the_oracle_of_the_conv2d_of_height_one(curvature: str):
    conv1d, conv2d = _conv1d_pair()
    X = torch.randn(4, 2, 9, generator=seeded(1), dtype=torch.float64)
    y = torch.randn(4, 2, 3, generator=seeded(2), dtype=torch.float64)  # the output (N, C, L)
    one = exact_blocks(conv1d, nn.MSELoss(), [(X, y)], ["0", "2"], curvature)
    two = exact_blocks(
        conv2d, nn.MSELoss(), [(X.unsqueeze(2), y.unsqueeze(2))], ["0", "2"], curvature
    )
    for layer in ("0", "2"):
        assert relative_error(one[layer], two[layer]) < TOL


@pytest.mark.parametrize("flavour", ["expand", "reduce"])
def test_kfac_ref_of_a_conv1d_is_that_of_the_conv2d_of_height_one(flavour: str):
    conv1d, conv2d = _conv1d_pair()
    X = torch.randn(4, 2, 9, generator=seeded(1), dtype=torch.float64)
    y = torch.randint(2, (4, 3), generator=seeded(2))  # a class at each of 3 output positions
    loss = nn.CrossEntropyLoss()
    for bias in ("separate", "joint"):
        one = compute_kfac(conv1d, loss, [(X, y)], kfac_approx=flavour, bias=bias)
        two = compute_kfac(
            conv2d, loss, [(X.unsqueeze(2), y.unsqueeze(1))], kfac_approx=flavour, bias=bias
        )
        for layer in ("0", "2"):
            assert relative_error(one[layer].to_dense(), two[layer].to_dense()) < TOL


# --- Conv3d as a Linear layer on explicitly unfolded patches -------------------------------------


def unfold_by_loops(inputs: Tensor, conv: nn.Conv3d) -> Tensor:
    """``(N, D', H', W', C k_d k_h k_w)``: every patch gathered by index, zero outside."""
    padded = nn.functional.pad(inputs, [p for p in reversed(conv.padding) for _ in (0, 1)])
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    out = [
        (padded.shape[2 + axis] - dilation[axis] * (kernel[axis] - 1) - 1) // stride[axis] + 1
        for axis in range(3)
    ]
    patches = inputs.new_zeros(inputs.shape[0], *out, inputs.shape[1], *kernel)
    for voxel in itertools.product(*(range(size) for size in out)):
        for tap in itertools.product(*(range(size) for size in kernel)):
            at = [voxel[a] * stride[a] + tap[a] * dilation[a] for a in range(3)]
            patches[(slice(None), *voxel, slice(None), *tap)] = padded[:, :, at[0], at[1], at[2]]
    return patches.flatten(start_dim=4)


class LinearOnPatches(nn.Module):
    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv
        self.linear = nn.Linear(conv.weight[0].numel(), conv.out_channels).double()
        with torch.no_grad():
            self.linear.weight.copy_(conv.weight.flatten(start_dim=1))
            self.linear.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(unfold_by_loops(x, self.conv)).sum(dim=(1, 2, 3))


def test_the_conv3d_oracle_and_kfac_ref_are_those_of_the_linear_layer_on_its_patches():
    """The Linear layer sees the patches as shared positions; both networks sum-pool them, so
    the oracle's blocks agree, and so do kfac_ref's (expand and reduce)."""
    torch.manual_seed(3)
    conv = nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1)).double()
    conv_net = nn.Sequential(conv, Pool("sum", (2, 3, 4)))
    patch_net = LinearOnPatches(conv)
    X = torch.randn(3, 2, 3, 4, 3, generator=seeded(4), dtype=torch.float64)
    y = torch.randn(3, 3, generator=seeded(5), dtype=torch.float64)
    data, loss = [(X, y)], nn.MSELoss(reduction="sum")
    for curvature in CURVATURES:
        conv_block = exact_blocks(conv_net, loss, data, ["0"], curvature)["0"]
        patch_block = exact_blocks(patch_net, loss, data, ["linear"], curvature)["linear"]
        assert relative_error(conv_block, patch_block) < TOL
    for flavour in ("expand", "reduce"):
        conv_kfac = compute_kfac(conv_net, loss, data, kfac_approx=flavour, bias="joint")
        patch_kfac = compute_kfac(
            patch_net, loss, data, kfac_approx=flavour, bias="joint", layers=["linear"]
        )
        assert relative_error(conv_kfac["0"].to_dense(), patch_kfac["linear"].to_dense()) < TOL


# --- Embedding as the Linear layer on one-hot inputs ---------------------------------------------


class LinearOnOneHot(nn.Module):
    def __init__(self, embedding: nn.Embedding, head: nn.Module) -> None:
        super().__init__()
        self.vocabulary = embedding.num_embeddings
        self.linear = nn.Linear(self.vocabulary, embedding.embedding_dim, bias=False).double()
        with torch.no_grad():
            self.linear.weight.copy_(embedding.weight.T)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        # by comparison: one_hot's data-dependent size cannot run under the oracle's vmap
        one_hot = (x.unsqueeze(-1) == torch.arange(self.vocabulary)).double()
        return self.head(self.linear(one_hot))


def _embedding_pair() -> tuple[nn.Sequential, LinearOnOneHot, list]:
    torch.manual_seed(6)
    embedding = nn.Embedding(5, 3).double()
    head = nn.Sequential(nn.Tanh(), Pool("mean", (1,)), nn.Linear(3, 2).double())
    X = torch.randint(5, (4, 6), generator=seeded(7))
    y = torch.randint(2, (4,), generator=seeded(8))
    return nn.Sequential(embedding, head), LinearOnOneHot(embedding, head), [(X, y)]


@pytest.mark.parametrize("curvature", CURVATURES)
def test_the_embedding_oracle_is_the_permuted_oracle_of_the_linear_layer_on_one_hot(curvature):
    embedding_net, linear_net, data = _embedding_pair()
    loss = nn.CrossEntropyLoss()
    embedding_block = exact_blocks(embedding_net, loss, data, ["0"], curvature)["0"]
    linear_block = exact_blocks(linear_net, loss, data, ["linear"], curvature)["linear"]
    order = embedding_order(5, 3)
    reordered = linear_block[order][:, order]
    assert relative_error(embedding_block, reordered) < TOL


@pytest.mark.parametrize("flavour", ["expand", "reduce"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only"])
def test_kfac_ref_of_an_embedding_is_the_permuted_kfac_of_the_linear_layer(flavour, fisher_type):
    embedding_net, linear_net, data = _embedding_pair()
    loss, arguments = nn.CrossEntropyLoss(), dict(kfac_approx=flavour, fisher_type=fisher_type)
    embedding_kfac = compute_kfac(embedding_net, loss, data, layers=["0"], **arguments)["0"]
    linear_kfac = compute_kfac(linear_net, loss, data, layers=["linear"], **arguments)["linear"]
    # the contract's shapes: A over the weight's columns (dim), B over its rows (indices)
    assert embedding_kfac.A.shape == (3, 3) and embedding_kfac.B.shape == (5, 5)
    order = embedding_order(5, 3)
    reordered = linear_kfac.to_dense()[order][:, order]
    assert relative_error(embedding_kfac.to_dense(), reordered) < TOL


def test_ekfac_of_an_embedding_is_the_permuted_ekfac_of_the_linear_layer():
    embedding_net, linear_net, data = _embedding_pair()
    loss = nn.CrossEntropyLoss()
    embedding = compute_ekfac(embedding_net, loss, data, layers=["0"], kfac_approx="reduce")["0"]
    linear = compute_ekfac(linear_net, loss, data, layers=["linear"], kfac_approx="reduce")[
        "linear"
    ]
    assert embedding.S.shape == (5, 3)
    order = embedding_order(5, 3)
    reordered = linear.to_dense()[order][:, order]
    assert relative_error(embedding.to_dense(), reordered) < TOL


# --- the claim -----------------------------------------------------------------------------------


def _problem(model: nn.Module, X: Tensor, y: Tensor) -> Problem:
    return Problem(model.double(), nn.MSELoss(), [(X, y)], ["0"], "claim")


def test_the_default_claim_covers_neither_the_new_layers_nor_does_the_reference_miss_one():
    default = Capabilities()
    assert default.layer_types == frozenset({"Linear", "Conv2d"})
    conv3d = _problem(
        nn.Sequential(nn.Conv3d(1, 1, 1)),
        torch.zeros(2, 1, 2, 2, 2, dtype=torch.float64),
        torch.zeros(2, 1, 2, 2, 2, dtype=torch.float64),
    )
    assert default.unsupported_problem(conv3d) == "not supported: layer types ['Conv3d']"
    assert ReferenceCandidate.capabilities.unsupported_problem(conv3d) is None
    assert ReferenceCandidate.capabilities.layer_types == frozenset(
        {"Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding"}
    )


def test_a_grouped_convolution_is_outside_a_claim_of_its_layer_type_alone():
    grouped = _problem(
        nn.Sequential(nn.Conv1d(2, 2, 1, groups=2)),
        torch.zeros(3, 2, 4, dtype=torch.float64),
        torch.zeros(3, 2, 4, dtype=torch.float64),
    )
    reason = "not supported: grouped convolutions (layers ['0'] with groups > 1)"
    layer_type_only = Capabilities(layer_types=frozenset({"Conv1d"}))
    assert layer_type_only.unsupported_problem(grouped) == reason
    claim = Capabilities(layer_types=frozenset({"Conv1d"}), grouped_convolutions=True)
    assert claim.unsupported_problem(grouped) is None
    assert ReferenceCandidate.capabilities.unsupported_problem(grouped) is None


def test_an_embedding_on_a_sequence_is_weight_sharing_and_its_problem_dtype_is_the_parameters():
    problem = _problem(
        nn.Sequential(nn.Embedding(4, 2)),
        torch.zeros(3, 5, dtype=torch.int64),
        torch.zeros(3, 5, 2, dtype=torch.float64),
    )
    assert problem.dtype == torch.float64
    no_sharing = Capabilities(layer_types=frozenset({"Embedding"}), weight_sharing=False)
    assert no_sharing.unsupported_problem(problem) == (
        "not supported: Embedding layers ['0'] on inputs with shared axes"
    )
    problem.batches = [(torch.zeros(3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.float64))]
    assert no_sharing.unsupported_problem(problem) is None


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Embedding(4, 2, padding_idx=0), "Embedding with padding_idx is not supported"),
        (nn.Embedding(4, 2, max_norm=1.0), "Embedding with max_norm is not supported"),
        (nn.Conv3d(1, 1, 3, padding="same"), "Conv3d with padding='same' is not supported"),
    ],
)
def test_kfac_ref_refuses_what_its_rule_does_not_describe(module: nn.Module, message: str):
    is_embedding = isinstance(module, nn.Embedding)
    X = (
        torch.zeros(2, 3, dtype=torch.int64)
        if is_embedding
        else torch.zeros(2, module.in_channels, *(3,) * (module.weight.ndim - 2))
    )
    model = nn.Sequential(module).double()
    with torch.no_grad():
        y = model(X if is_embedding else X.double())
    with pytest.raises(NotImplementedError, match=message):
        compute_kfac(model, nn.MSELoss(), [(X if is_embedding else X.double(), y)])


# --- the fuzzer kills each new layer's mutant, with no case file ---------------------------------


@pytest.mark.parametrize(
    "mutant", [Conv1dChannelsLastInPatch, Conv3dKernelAxesReversed, EmbeddingCountsForReduce]
)
def test_the_fuzzer_kills_the_mutant_of_a_new_layer_with_a_failure(mutant):
    outcome = search(mutant(), FUZZ_EXAMPLES, seed=0, database=None, max_failures=1)
    assert outcome.failures, f"{mutant.__name__} survived {outcome.examples} examples"
    [failure] = outcome.failures
    assert failure.result.status == "failed"
    layer = {
        Conv1dChannelsLastInPatch: "conv1d",
        Conv3dKernelAxesReversed: "conv3d",
        EmbeddingCountsForReduce: "embedding",
    }[mutant]
    assert any(spec[0] == layer for spec in failure.case.architecture)
