"""Deliberately wrong JAX candidates: kfac-jax with one bug of the PyTorch bug zoo each.

``counterpart`` names the mutant of ``tests/zoo`` with the same bug; ``tests/test_jax_runner.py``
runs each on the killers of its counterpart that the JAX runner has (exactness items of stored
cases) and requires the same failures. Importing this module needs JAX and kfac-jax.
"""

from __future__ import annotations

from kfac_conformance import conventions
from kfac_conformance.jax.candidate import Factors
from kfac_conformance.jax.kfac_jax_candidate import KfacJaxCandidate
from kfac_conformance.jax.runner import LOSS_CLASSES
from kfac_conformance.jax.stored import StoredCase


class KroneckerOrderSwapped(KfacJaxCandidate):
    """A and B exchanged where their shapes allow it (a column-major flattening)."""

    name = "kfac-jax-kronecker-order-swapped"
    counterpart = "KroneckerOrderSwapped"
    diagnosis = "Kronecker order swapped"

    def compute(self, case: StoredCase, fisher_type: str, flavour: str) -> dict[str, Factors]:
        result = super().compute(case, fisher_type, flavour)
        return {
            layer: Factors(f.B, f.A, f.bias) if f.A.shape == f.B.shape else f
            for layer, f in result.items()
        }


class ReductionFactorMissing(KfacJaxCandidate):
    """Declares the tutorial's scale but converts kfac-jax's blocks with the ``R`` of a summed
    loss whatever the reduction: a mean-reduced loss gets the KFAC of the summed one."""

    name = "kfac-jax-reduction-factor-missing"
    counterpart = "ReductionFactorMissing"
    diagnosis = "N*T"
    conventions = conventions.TUTORIAL

    def compute(self, case: StoredCase, fisher_type: str, flavour: str) -> dict[str, Factors]:
        result = super().compute(case, fisher_type, flavour)
        loss = LOSS_CLASSES[case.loss]
        summed = {
            "N": case.num_data,
            "R": conventions.reduction_factor(loss, "sum", 1, 1),
            "loss": loss,
        }
        scale = conventions.scale(KfacJaxCandidate.conventions, fisher_type, summed)
        return {layer: Factors(f.A, f.B / scale, f.bias) for layer, f in result.items()}


MUTANTS = (KroneckerOrderSwapped, ReductionFactorMissing)
