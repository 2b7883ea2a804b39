"""Pitfalls a real library passed unseen because no check exercised them under its claim
(issue 20): a dilation ignored, a tied module's uses mixed up, unequal batches weighted alike.
Each claims what that library claimed, so only checks that run for those claims can kill it."""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_ref import compute
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import LayerRule

from .base import Mutant, reference_compute, replace, rules_replaced


class ConvIgnoresDilation(Mutant):
    """Convolution patches unfolded with the layer's kernel, stride and padding but without its
    dilation: a dilated layer's A is built from neighbouring pixels the kernel skips. Claims
    only the empirical and the MC Fisher, as the library that had it did.

    Killed by agreement/empirical on the dilated convolutions (the agreement case
    cnn[dilated-tanh-ce], and conv-expand[last-layer-stride2-pad1-dil2], whose exactness map
    names only type-2 layers).
    """

    killers = (
        "agreement/empirical[cnn[dilated-tanh-ce]]",
        "agreement/empirical[conv-expand[last-layer-stride2-pad1-dil2]]",
    )
    capabilities = Capabilities(fisher_types=frozenset({"empirical", "mc"}))

    def patches(self, request: Request):
        def undilated(layer: nn.Conv2d, inputs):
            patches = nn.functional.unfold(
                inputs, kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride
            )
            return patches.transpose(1, 2)

        def change(key, rule: LayerRule) -> LayerRule:
            return rule._replace(input_positions=undilated) if key[0] is nn.Conv2d else rule

        return [rules_replaced(change)]


class TiedModuleMixesUses(Mutant):
    """A module applied twice answers instead of raising, with A from the inputs of its last
    use and G from the output gradients of its first (each hook call overwrites the input
    but keeps the first output). Claims only the empirical Fisher, as the library that had
    it did.

    Killed by weight-tying/empirical-exact-or-raises (the tied layer's block is not the
    exact empirical Fisher block).
    """

    killers = ("weight-tying/empirical-exact-or-raises",)
    capabilities = Capabilities(fisher_types=frozenset({"empirical"}))

    def patches(self, request: Request):
        @contextmanager
        def last_input_first_output(selected: dict[str, nn.Module]):
            recorded = {}

            def hook_for(name: str):
                def hook(module, args, output) -> None:
                    first_output = recorded[name][1] if name in recorded else output
                    recorded[name] = (args[0].detach(), first_output)

                return hook

            handles = [module.register_forward_hook(hook_for(n)) for n, module in selected.items()]
            try:
                yield recorded
            finally:
                for handle in handles:
                    handle.remove()

        return [replace(compute, "_recording", last_input_first_output)]


class UnequalBatchesWeightedEqually(Mutant):
    """Each batch's factors are computed on the batch alone, as per-datum averages, and the
    batches' averages are averaged with equal weights (a running mean over batches) instead
    of weighting each batch by its number of data. Right when the batches have equal sizes;
    with unequal sizes the small batches count too much.

    Killed by exactness/type-2-expand and invariance/batch-splitting on
    deep-linear[mse-mean-uneven-batches], and by exactness/empirical-expand on
    identical-inputs-mlp[mse-mean-uneven-batches] (there every A is the same, so only the
    empirical Fisher's B shows it).
    """

    killers = (
        "exactness/type-2-expand[deep-linear[mse-mean-uneven-batches]]",
        "invariance/batch-splitting[deep-linear[mse-mean-uneven-batches]]",
        "exactness/empirical-expand[identical-inputs-mlp[mse-mean-uneven-batches]]",
    )

    def compute(self, problem: Problem, request: Request):
        total = problem.scale_quantities()
        per_batch = []
        for batch in problem.batches:
            one = Problem(
                problem.model, problem.loss_func, [batch], problem.layers, problem.case_id
            )
            batch = one.scale_quantities()
            # B_b / (R_b N_b) is the batch's B per datum; forward-only's B is the identity
            scale = (total["R"] * total["N"]) / (batch["R"] * batch["N"])
            per_batch.append(
                (
                    1.0 if request.fisher_type == "forward-only" else scale,
                    reference_compute(one, request),
                )
            )
        count = len(per_batch)
        return {
            layer: KroneckerFactors(
                sum(result[layer].A for _, result in per_batch) / count,
                sum(scale * result[layer].B for scale, result in per_batch) / count,
                per_batch[0][1][layer].bias,
            )
            for layer in problem.layers
        }
