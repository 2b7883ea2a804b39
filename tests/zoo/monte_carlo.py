"""Pitfalls of the Monte Carlo Fisher: sample normalisation, distribution, labels and RNG."""

from __future__ import annotations

import math

import torch
from torch import nn

from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.session import reference_compute
from kfac_ref import compute, losses

from .base import Mutant, replace

_original_vectors = compute.backpropagated_vectors
_original_sample_labels = losses.sample_labels


class McNormalisedByM(Mutant):
    """MC backpropagated vectors divided by M instead of sqrt(M), so B carries 1/M^2 instead of
    1/M (the estimate is M times too small).

    Killed by mc/unbiased (scale test, mean ratio 1/4 with mc_samples=4).
    """

    killers = ("mc/unbiased",)
    diagnosis = "off by a constant factor x 0.25"

    def patches(self, request: Request):
        def by_m(loss_func, output, labels, fisher_type, mc_samples, generator):
            vectors = _original_vectors(
                loss_func, output, labels, fisher_type, mc_samples, generator
            )
            return vectors / math.sqrt(mc_samples) if fisher_type == "mc" else vectors

        return [replace(compute, "backpropagated_vectors", by_m)]


class McTrueLabels(Mutant):
    """The MC Fisher built from the true labels instead of labels sampled from the model: it is
    the empirical Fisher, and the seed has no effect.

    Killed by mc/seeds-differ and mc/unbiased.
    """

    killers = ("mc/seeds-differ", "mc/unbiased")

    def patches(self, request: Request):
        def true_labels(loss_func, output, labels, fisher_type, mc_samples, generator):
            if fisher_type != "mc":
                return _original_vectors(
                    loss_func, output, labels, fisher_type, mc_samples, generator
                )
            empirical = _original_vectors(loss_func, output, labels, "empirical", 1, generator)
            return empirical.expand(mc_samples, *empirical.shape[1:]) / math.sqrt(mc_samples)

        return [replace(compute, "backpropagated_vectors", true_labels)]


class McGaussianUnitVariance(Mutant):
    """MSE labels sampled from N(f, 2I) instead of N(f, I), the likelihood of the criterion
    0.5*||f - y||^2 (the noise scaled by sqrt(2), a slip between the two ways of splitting
    MSE): the MC Fisher is twice type-2.

    Killed by mc/unbiased on MSE cases (mean ratio 2).
    """

    killers = ("mc/unbiased[deep-linear[mse-mean-3batches]]",)
    diagnosis = "off by a constant factor x 2"

    def patches(self, request: Request):
        def unit_variance(loss_func, terms, num_samples, generator):
            sampled = _original_sample_labels(loss_func, terms, num_samples, generator)
            if isinstance(loss_func, nn.MSELoss):
                return terms + (sampled - terms) * math.sqrt(2.0)
            return sampled

        return [replace(losses, "sample_labels", unit_variance)]


class McOneSampleRepeated(Mutant):
    """One label drawn per datum and repeated M times (a broadcasting slip): still unbiased,
    but the error no longer shrinks with M.

    Survives mc/unbiased; killed by mc/sqrt-m-convergence alone (error ratio 1 instead of 4).
    """

    killers = ("mc/sqrt-m-convergence",)

    def patches(self, request: Request):
        def repeated(loss_func, terms, num_samples, generator):
            one = _original_sample_labels(loss_func, terms, 1, generator)
            return one.expand(num_samples, *one.shape[1:])

        return [replace(losses, "sample_labels", repeated)]


class McGlobalRng(Mutant):
    """MC labels drawn from torch's global generator, ignoring the request's seed: results
    depend on the global RNG state and the seed does nothing.

    Killed by mc/seed-reproducible, which reseeds the global RNG between two calls with the
    same seed (the harness also reports the use of the global RNG as a side effect).
    """

    killers = ("mc/seed-reproducible",)

    def patches(self, request: Request):
        def global_rng(loss_func, terms, num_samples, generator):
            seed = int(torch.randint(2**62, ()))
            return _original_sample_labels(
                loss_func, terms, num_samples, torch.Generator().manual_seed(seed)
            )

        return [replace(losses, "sample_labels", global_rng)]


# the factor an outside library's convolution MC blocks were off by, in the trial behind issue
# 20, where mc/unbiased still pooled all layers into one statistic and passed
_CONV_MC_FACTOR = 1 / 16


class McConvBlockSixteenth(Mutant):
    """MC KFAC of convolutions at 1/16 of its target while the Linear layers' blocks are right
    (a normalisation of the sampled gradients applied to convolutions only); a statistic pooled
    over layers hides it behind the larger Linear blocks.

    Killed by mc/unbiased on the MC cases with convolutions: each layer's block is tested on
    its own, and the diagnosis names the convolutions as the only wrong layers.
    """

    killers = (
        "mc/unbiased[cnn[relu-ce]]",
        "mc/unbiased[conv-reduce[stride2-pad1-mean-pool]]",
    )
    scaled_layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d,)

    def compute(self, problem: Problem, request: Request):
        result = dict(reference_compute(problem, request))
        if request.fisher_type == "mc":
            for layer in result:
                if isinstance(problem.model.get_submodule(layer), self.scaled_layer_types):
                    result[layer] = result[layer].scaled(_CONV_MC_FACTOR)
        return result
