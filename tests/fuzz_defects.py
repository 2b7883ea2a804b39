"""Test-local defective candidates for the fuzzer's tests (tests/test_fuzz.py): the defects a
real library had and the catalogue missed (issue 20), each planted in ``kfac_ref``.

They claim only what that library claimed, so only the fuzzer's drawn problems within the
claim can find them. The zoo (tests/zoo) holds the official mutants for the same defects;
these stay here so the fuzzer's tests do not depend on the zoo's choices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from zoo import ReductionFactorMissing
from zoo.base import Mutant, replace, rules_replaced

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref import compute
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import LayerRule


class DilationIgnored(Mutant):
    """Convolution patches unfolded with the layer's kernel, stride and padding but without
    its dilation; claims only the empirical and MC Fisher."""

    capabilities = Capabilities(fisher_types=frozenset({"empirical", "mc"}))

    def patches(self, request: Request):
        def undilated(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
            return nn.functional.unfold(
                inputs, layer.kernel_size, padding=layer.padding, stride=layer.stride
            ).transpose(1, 2)

        def change(key, rule: LayerRule) -> LayerRule:
            return rule._replace(input_positions=undilated) if key[0] is nn.Conv2d else rule

        return [*super().patches(request), rules_replaced(change)]


@contextmanager
def _last_input_first_output(selected: dict[str, nn.Module]) -> Iterator[dict]:
    """``kfac_ref``'s recording of each layer's (input, output), without its refusal of a
    module applied twice: the input of the last use and the output of the first are kept."""
    recorded: dict[str, tuple[Tensor, Tensor]] = {}

    def record(name: str, inputs: Tensor, output: Tensor) -> None:
        recorded[name] = (inputs.detach(), recorded.get(name, (None, output))[1])

    handles = [
        module.register_forward_hook(
            lambda _, args, output, name=name: record(name, args[0], output)
        )
        for name, module in selected.items()
    ]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


class TiedLastInputFirstGradient(Mutant):
    """A module applied twice gets A from its last use and G from its first, silently; claims
    only the empirical Fisher."""

    capabilities = Capabilities(fisher_types=frozenset({"empirical"}))

    def patches(self, request: Request):
        return [*super().patches(request), replace(compute, "_recording", _last_input_first_output)]


class UnequalBatchesWeightedEqually(Mutant):
    """KFAC computed per batch and the batches averaged with equal weights, where a batch
    counts as many times as it has data: right when all batches have the same size."""

    capabilities = Capabilities(fisher_types=frozenset({"type-2", "empirical", "forward-only"}))

    def compute(self, problem: Problem, request: Request):
        per_batch = []
        for batch in problem.batches:
            one = Problem(
                problem.model, problem.loss_func, [batch], problem.layers, problem.case_id
            )
            per_batch.append((len(batch[0]), super().compute(one, request)))
        total, weight = sum(size for size, _ in per_batch), 1 / len(per_batch)
        # a batch's B is normalised by its own data under reduction="mean" (then the weight
        # N_b / N would make it right); under "sum" it is a sum, N / N_b times its mean
        # (forward-only: the identity)
        summed = problem.loss_func.reduction == "sum" and request.fisher_type != "forward-only"
        return {
            layer: KroneckerFactors(
                sum(weight * result[layer].A for _, result in per_batch),
                sum(
                    weight * (total / size if summed else 1.0) * result[layer].B
                    for size, result in per_batch
                ),
                per_batch[0][1][layer].bias,
            )
            for layer in problem.layers
        }


class DilationIgnoredAndReductionFactorMissing(DilationIgnored, ReductionFactorMissing):
    """Two unrelated defects at once: dilation ignored in convolution patches, and B never
    multiplied by the loss's reduction factor; claims only the empirical Fisher. Both fail
    agreement/empirical, the second by a constant factor."""

    capabilities = Capabilities(fisher_types=frozenset({"empirical"}))
