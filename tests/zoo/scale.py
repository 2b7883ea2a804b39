"""Pitfalls that show only at scale: more data than one chunk, wide convolutions.

Each mutant is ``kfac_ref`` itself wherever a batch holds at most ``CHUNK`` data and every
convolution at most ``WIDE_CHANNELS`` input channels, which every problem of the block
profiles (quick, default, thorough) does; so they pass the default profile by construction
(``tests/test_scale.py`` checks the condition on its every problem) and only the ``scale``
profile (:mod:`kfac_conformance.checks.scale`, :mod:`kfac_conformance.checks.scale_mc`) can
kill them. ``killers`` name its checks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from kfac_conformance.contract.problem import Problem, Request
from kfac_ref import compute
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import LayerRule

from .base import Mutant, reference_compute, replace, rules_replaced

CHUNK = 128
WIDE_CHANNELS = 64


class ChunksDropPartial(Mutant):
    """Each batch is processed in chunks of 128 data with ``range(max(1, N // 128))``, which
    drops the last partial chunk whenever a batch holds more than one chunk (a batch of 160
    counts 128).

    Killed by scale/type-2-exactness on the deep linear network (160 data): ``A`` and ``B``
    are the KFAC of a subset of the data.
    """

    killers = ("scale/type-2-exactness", "scale/agreement")

    def compute(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        chunks = []
        for X, y in problem.batches:
            count = max(1, X.shape[0] // CHUNK)
            chunks.extend(
                (X[i * CHUNK : (i + 1) * CHUNK], y[i * CHUNK : (i + 1) * CHUNK])
                for i in range(count)
            )
        return reference_compute(dataclasses.replace(problem, batches=chunks), request)


def _chunked_in_float32(total: Callable[[Tensor], Tensor], data_axis: int) -> Callable:
    """``total(positions)`` summed over chunks of ``CHUNK`` data into a float32 buffer when
    there is more than one chunk, then cast back to the positions' dtype."""

    def summed(positions: Tensor) -> Tensor:
        chunks = positions.split(CHUNK, dim=data_axis)
        if len(chunks) == 1:
            return total(positions)
        buffer = None
        for chunk in chunks:
            part = total(chunk).to(torch.float32)
            buffer = part if buffer is None else buffer + part
        return buffer.to(positions.dtype)

    return summed


class Float32ChunkAccumulation(Mutant):
    """The factors' sums over chunks of 128 data are accumulated in a float32 buffer (the
    default dtype) even when float64 was asked for; a batch of one chunk is summed in its own
    dtype, so only large batches lose precision (relative error ~1e-7 instead of ~1e-16).

    Killed by scale/type-2-exactness on the deep linear network (160 data, float64).
    """

    killers = ("scale/type-2-exactness", "scale/agreement")

    def patches(self, request: Request):
        def change(key, rule: LayerRule) -> LayerRule:
            input_sum = _chunked_in_float32(lambda p: rule.input_sum(p)[0], data_axis=0)
            return rule._replace(
                input_sum=lambda positions: (input_sum(positions), rule.input_sum(positions)[1]),
                grad_sum=_chunked_in_float32(rule.grad_sum, data_axis=1),
            )

        return [rules_replaced(change)]


class WidePatchesChannelsLast(Mutant):
    """A convolution with more than 64 input channels has its patches unfolded channels-last
    (``(kh, kw, C_in)``, as a channels-last fast path lays them out) while the weight is
    flattened ``(C_in, kh, kw)``: ``A`` is permuted against the weight. Narrow convolutions
    take the correct path.

    Killed by scale/agreement and scale/type-2-exactness on the ResNet-style CNN (convolutions
    of 72 to 256 input channels).
    """

    killers = ("scale/type-2-exactness", "scale/agreement")

    def patches(self, request: Request):
        def change(key, rule: LayerRule) -> LayerRule:
            if key[0] is not nn.Conv2d:
                return rule

            def positions(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
                patches = rule.input_positions(layer, inputs)
                if layer.in_channels <= WIDE_CHANNELS:
                    return patches
                kernel = layer.kernel_size[0] * layer.kernel_size[1]
                grouped = patches.reshape(*patches.shape[:2], layer.in_channels, kernel)
                return grouped.transpose(2, 3).reshape(patches.shape)

            return rule._replace(input_positions=positions)

        return [rules_replaced(change)]


_original_vectors = compute.backpropagated_vectors


class McSamplesCappedAtScale(Mutant):
    """To bound the memory of the sampled gradients, a batch of more than 128 data draws at
    most ``128 M`` labels in all (``max(1, 128 M // N)`` per datum), but the sampled gradients
    are still normalised by the ``M`` that was asked: ``B`` is ``drawn / M`` of its value
    (1/2 for 160 data and ``M = 2``). Type-2 and the empirical Fisher draw nothing and are
    exact.

    Killed by scale/mc-unbiased on the deep linear network (160 data), the only check that
    sees MC KFAC on more than one chunk.
    """

    killers = ("scale/mc-unbiased",)

    def patches(self, request: Request):
        def capped(loss_func, output, labels, fisher_type, mc_samples, generator):
            data = output.shape[0]
            if fisher_type != "mc" or data <= CHUNK:
                return _original_vectors(
                    loss_func, output, labels, fisher_type, mc_samples, generator
                )
            drawn = max(1, CHUNK * mc_samples // data)
            vectors = _original_vectors(loss_func, output, labels, "mc", drawn, generator)
            return vectors * math.sqrt(drawn / mc_samples)

        return [replace(compute, "backpropagated_vectors", capped)]


SCALE_MUTANTS: list[type[Mutant]] = [
    ChunksDropPartial,
    Float32ChunkAccumulation,
    WidePatchesChannelsLast,
    McSamplesCappedAtScale,
]
