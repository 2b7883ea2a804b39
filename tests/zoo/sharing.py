"""Pitfalls of weight sharing: expand/reduce normalisation and convolution patches."""

from __future__ import annotations

from torch import nn

from kfac_conformance.contract.problem import Request
from kfac_ref.layers import LayerRule

from .base import Mutant, rules_replaced


class ExpandNormalisedByData(Mutant):
    """KFAC-expand's A divided by the number of data N instead of N*S (shared positions counted
    as if they were features of one datum): A is S times too large on layers with sharing.

    Killed by exactness/type-2-expand on the shared-axis cases.
    """

    killers = ("exactness/type-2-expand[expand-deep-linear[1-axis]]",)
    diagnosis = "the weight block is off by a constant factor x 4 = S"

    def patches(self, request: Request):
        def by_data(key, rule: LayerRule) -> LayerRule:
            if key[1] != "expand":
                return rule
            input_sum = rule.input_sum

            def per_datum_count(positions):
                total, _ = input_sum(positions)
                return total, positions.shape[0]

            return rule._replace(input_sum=per_datum_count)

        return [rules_replaced(by_data)]


class ReduceSumsInputs(Mutant):
    """KFAC-reduce sums the inputs over shared positions where it must average them: A is S^2
    times too large, on the layers with shared axes only.

    Killed by exactness/type-2-reduce; the diagnosis says only the shared-axis layers are wrong.
    """

    killers = ("exactness/type-2-reduce[reduce-deep-linear[pool-in-middle]]",)
    diagnosis = "exactly the layers with shared axes"

    def patches(self, request: Request):
        def summed(positions):
            total = positions.sum(dim=1)
            return total.T @ total, total.shape[0]

        return [rules_replaced(lambda key, rule: _for_reduce(key, rule, input_sum=summed))]


class ReduceAveragesGrads(Mutant):
    """KFAC-reduce averages the output gradients over shared positions where it must sum them:
    B is S^2 times too small on the layers with shared axes.

    Killed by exactness/type-2-reduce.
    """

    killers = ("exactness/type-2-reduce[reduce-deep-linear[pool-in-middle]]",)
    diagnosis = "= 1/S^2"

    def patches(self, request: Request):
        def averaged(grad_positions):
            mean = grad_positions.mean(dim=2).reshape(-1, grad_positions.shape[-1])
            return mean.T @ mean

        return [rules_replaced(lambda key, rule: _for_reduce(key, rule, grad_sum=averaged))]


def _for_reduce(key, rule: LayerRule, **fields) -> LayerRule:
    return rule._replace(**fields) if key[1] == "reduce" else rule


class ConvPatchesIgnoreGeometry(Mutant):
    """Convolution patches unfolded with the kernel size only, ignoring the layer's stride,
    padding and dilation: A is built from patches the kernel never sees.

    Killed by exactness on the strided/padded/dilated convolution cases.
    """

    killers = (
        "exactness/type-2-expand[conv-expand[last-layer-stride2-pad1-dil2]]",
        "exactness/type-2-reduce[conv-reduce[stride2-pad1-mean-pool]]",
    )
    diagnosis = "wrong only on layers"

    def patches(self, request: Request):
        def kernel_only(layer: nn.Conv2d, inputs):
            return nn.functional.unfold(inputs, kernel_size=layer.kernel_size).transpose(1, 2)

        def change(key, rule: LayerRule) -> LayerRule:
            return rule._replace(input_positions=kernel_only) if key[0] is nn.Conv2d else rule

        return [rules_replaced(change)]
