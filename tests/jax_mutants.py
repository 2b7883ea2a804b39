"""Deliberately wrong JAX candidates: kfac-jax with one bug of the PyTorch bug zoo each.

``counterpart`` names the mutant of ``tests/zoo`` with the same bug; ``tests/test_jax_runner.py``
runs each on the killers of its counterpart that the JAX runner has (exactness items of stored
cases) and requires the same failures. ``DISTRIBUTED_MUTANTS`` combine the devices' factors
wrongly (two are data-parallel mutants of ``tests/zoo/distributed.py`` in kfac-jax's terms);
their killer is ``distributed/kfac-type-2``. Importing this module needs JAX and kfac-jax.
"""

from __future__ import annotations

import jax
import kfac_jax

from kfac_conformance.contract import conventions
from kfac_conformance.jax import kfac_jax_candidate
from kfac_conformance.jax.kfac_jax_candidate import DEVICE_AXIS, KfacJaxCandidate
from kfac_conformance.neutral.factors import Factors
from kfac_conformance.neutral.fixtures import LOSS_CLASSES, StoredCase


class KroneckerOrderSwapped(KfacJaxCandidate):
    """A and B exchanged where their shapes allow it (a column-major flattening)."""

    name = "kfac-jax-kronecker-order-swapped"
    counterpart = "KroneckerOrderSwapped"
    diagnosis = "Kronecker order swapped"

    def compute(self, case: StoredCase, fisher_type: str, flavour: str, **mc) -> dict[str, Factors]:
        result = super().compute(case, fisher_type, flavour, **mc)
        return {
            layer: Factors(f.B, f.A, f.bias) if f.A.shape == f.B.shape else f
            for layer, f in result.items()
        }


class ReductionFactorMissing(KfacJaxCandidate):
    """Declares the tutorial's scale but converts kfac-jax's blocks with the ``R`` of a summed
    loss whatever the reduction: a mean-reduced loss gets the KFAC of the summed one."""

    name = "kfac-jax-reduction-factor-missing"
    counterpart = "ReductionFactorMissing"
    # named N*T where there are several data; on one datum the count N = 1 names nothing
    diagnosis = "off by a constant factor"
    conventions = conventions.TUTORIAL

    def compute(self, case: StoredCase, fisher_type: str, flavour: str, **mc) -> dict[str, Factors]:
        result = super().compute(case, fisher_type, flavour, **mc)
        loss = LOSS_CLASSES[case.loss]
        summed = {
            "N": case.num_data,
            "R": conventions.reduction_factor(loss, "sum", 1, 1),
            "loss": loss,
        }
        scale = conventions.scale(KfacJaxCandidate.conventions, fisher_type, summed)
        return {layer: Factors(f.A, f.B / scale, f.bias) for layer, f in result.items()}


class McNormalisedByM(KfacJaxCandidate):
    """The MC estimate divided by the number of samples once more (kfac-jax already averages
    over its ``num_samples``): M times too small."""

    name = "kfac-jax-mc-normalised-by-m"
    counterpart = "McNormalisedByM"
    diagnosis = "off by a constant factor"

    def compute(self, case: StoredCase, fisher_type: str, flavour: str, **mc) -> dict[str, Factors]:
        result = super().compute(case, fisher_type, flavour, **mc)
        if fisher_type != "mc":
            return result
        samples = mc.get("mc_samples", 1)
        return {layer: Factors(f.A, f.B / samples, f.bias) for layer, f in result.items()}


class McGaussianUnitVariance(KfacJaxCandidate):
    """MSE registered as a Gaussian of variance 1 (the likelihood of ½‖f − y‖²) while the
    declared convention is kfac-jax's squared error (variance ½): type-2 and MC are half of
    what is declared."""

    name = "kfac-jax-mc-gaussian-unit-variance"
    counterpart = "McGaussianUnitVariance"
    diagnosis = "off by a constant factor"

    def compute(self, case: StoredCase, fisher_type: str, flavour: str, **mc) -> dict[str, Factors]:
        original = kfac_jax_candidate.register_loss

        def unit_variance(loss, output, targets):
            if loss != "mse":
                return original(loss, output, targets)
            kfac_jax.register_normal_predictive_distribution(output, targets, variance=1.0)
            return 0.0

        kfac_jax_candidate.register_loss = unit_variance
        try:
            return super().compute(case, fisher_type, flavour, **mc)
        finally:
            kfac_jax_candidate.register_loss = original


MUTANTS = (KroneckerOrderSwapped, ReductionFactorMissing, McNormalisedByM, McGaussianUnitVariance)


class NotSynced(KfacJaxCandidate):
    """kfac-jax's ``sync`` never called: each device keeps the factors of its own shard."""

    name = "kfac-jax-not-synced"
    diagnosis = "this device's shard alone"

    def combined(self, estimator, state):
        return state


class SyncsOnlyInputFactor(KfacJaxCandidate):
    """Only the input factor (kfac-jax's ``factors[0]``) averaged over the devices; the
    output-gradient factor keeps this device's shard (the zoo's ``ForgetsToReduceB``)."""

    name = "kfac-jax-syncs-only-input-factor"
    diagnosis = ""  # kron(A of all, G of one shard): no named factor or hypothesis fits

    def combined(self, estimator, state):
        for block_state in state.blocks_states:
            block_state.factors[0].sync(DEVICE_AXIS)
        return state


class SumsInputFactor(KfacJaxCandidate):
    """The input factor summed over the devices (``psum``) instead of averaged: W times too
    large, as the zoo's ``ReducesATwice``; the output-gradient factor is averaged."""

    name = "kfac-jax-sums-input-factor"
    diagnosis = "x 2 = W (W = 2 devices)"

    def combined(self, estimator, state):
        for block_state in state.blocks_states:
            inputs, gradients = block_state.factors
            inputs.value = jax.lax.psum(inputs.value, DEVICE_AXIS)
            gradients.sync(DEVICE_AXIS)
        return state


DISTRIBUTED_MUTANTS = (NotSynced, SyncsOnlyInputFactor, SumsInputFactor)
