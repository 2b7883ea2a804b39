"""Pitfalls of the layers beyond Linear and Conv2d: patch order in 1-D and 3-D convolutions,
an embedding's one-hot inputs, and a grouped convolution's groups."""

from __future__ import annotations

from unittest import mock

import torch
from torch import Tensor, nn

from kfac_conformance.contract.problem import Capabilities, Request
from kfac_ref.layers import GROUPED_REGISTRY, LayerRule, conv_nd_positions

from .base import Mutant, rules_replaced


def _claiming(*layer_types: str) -> Capabilities:
    return Capabilities(layer_types=frozenset({"Linear", *layer_types}))


def _with_positions(layer_type: type[nn.Module], positions) -> Mutant:
    def change(key, rule: LayerRule) -> LayerRule:
        return rule._replace(input_positions=positions) if key[0] is layer_type else rule

    return rules_replaced(change)


class Conv1dChannelsLastInPatch(Mutant):
    """Conv1d patches ordered (kernel tap, input channel) where ``weight[o].flatten()`` is
    (input channel, kernel tap): A is the right matrix in the wrong basis whenever a kernel
    has several taps and channels.

    Killed by exactness/type-2-reduce on the 1-D CNN case.
    """

    killers = ("exactness/type-2-reduce[conv1d-reduce[stride2-pad1-mean-pool]]",)
    diagnosis = "wrong only on layers"
    capabilities = _claiming("Conv1d")

    def patches(self, request: Request):
        def channels_last(layer: nn.Conv1d, inputs: Tensor) -> Tensor:
            patches = conv_nd_positions(layer, inputs)
            taps = layer.kernel_size[0]
            by_channel = patches.reshape(*patches.shape[:2], layer.in_channels, taps)
            return by_channel.transpose(2, 3).flatten(start_dim=2)

        return [_with_positions(nn.Conv1d, channels_last)]


class Conv3dKernelAxesReversed(Mutant):
    """Conv3d patches with the kernel's axes in reverse order, (channel, width, height, depth)
    where ``weight[o].flatten()`` is (channel, depth, height, width), as when the three axes
    are unfolded one at a time and stacked the wrong way round.

    Killed by exactness/type-2-expand on the 3-D convolution case.
    """

    killers = ("exactness/type-2-expand[conv3d-expand[last-layer-pad1-dil2]]",)
    capabilities = _claiming("Conv3d")

    def patches(self, request: Request):
        def reversed_axes(layer: nn.Conv3d, inputs: Tensor) -> Tensor:
            patches = conv_nd_positions(layer, inputs)
            by_axis = patches.reshape(*patches.shape[:2], layer.in_channels, *layer.kernel_size)
            return by_axis.permute(0, 1, 2, 5, 4, 3).flatten(start_dim=2)

        return [_with_positions(nn.Conv3d, reversed_axes)]


class EmbeddingCountsForReduce(Mutant):
    """KFAC-reduce's A of an Embedding from the index counts, ``diag(sum_s a_ns) / S^2`` per
    datum, as KFAC-expand's A is, instead of the outer products of the averaged one-hot
    vectors: it drops the cross terms of the indices a datum holds together. Right when a
    datum has one position.

    Killed by exactness/type-2-reduce on the pooled embedding case.
    """

    killers = ("exactness/type-2-reduce[embedding-reduce[mean-pool]]",)
    diagnosis = "wrong only on layers"
    capabilities = _claiming("Embedding")

    def patches(self, request: Request):
        def counts(positions: Tensor) -> tuple[Tensor, int]:
            per_datum = positions.sum(dim=1) / positions.shape[1] ** 2
            return torch.diag(per_datum.sum(dim=0)), positions.shape[0]

        def change(key, rule: LayerRule) -> LayerRule:
            if key == (nn.Embedding, "reduce"):
                return rule._replace(input_sum=counts)
            return rule

        return [rules_replaced(change)]


class GroupedConvFirstGroupInputs(Mutant):
    """A grouped convolution's patches unfolded over ``weight.shape[1] = C_in / groups``
    input channels as for an ungrouped layer, so every group's A is the first group's: right
    only when every group sees the same inputs.

    Killed by exactness/type-2-expand on the grouped last-layer case.
    """

    killers = ("exactness/type-2-expand[grouped-conv-expand[last-layer-2-groups]]",)
    diagnosis = "wrong only in groups [1] (right in [0])"
    capabilities = Capabilities(
        layer_types=frozenset({"Linear", "Conv1d", "Conv2d", "Conv3d"}), grouped_convolutions=True
    )

    def patches(self, request: Request):
        def first_group_everywhere(rule: LayerRule):
            def positions(layer: nn.Module, inputs: Tensor) -> Tensor:
                grouped = rule.input_positions(layer, inputs)
                return grouped[..., :1, :].expand(grouped.shape)

            return rule._replace(input_positions=positions)

        changed = {key: first_group_everywhere(rule) for key, rule in GROUPED_REGISTRY.items()}
        return [mock.patch.dict(GROUPED_REGISTRY, changed)]
