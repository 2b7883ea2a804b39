"""Candidates of the neutral runner written in numpy alone, for tests/test_neutral_core.py.

:class:`StoredReference` answers every request with the reference KFAC stored in the fixtures
(the agreement cases hold it), so it passes agreement by construction; each subclass changes
one thing, and the test says which verdict that must give.
"""

from __future__ import annotations

import numpy as np

from kfac_conformance.contract.conventions import TUTORIAL, Conventions
from kfac_conformance.neutral.candidate import Refused
from kfac_conformance.neutral.factors import Factors
from kfac_conformance.neutral.fixtures import StoredCase


class StoredReference:
    name = "stored-reference"
    version = None
    framework = "numpy"
    dtype = "float64"
    conventions: Conventions = TUTORIAL
    bias = "joint"

    def refusal(self, case: StoredCase, fisher_type: str, flavour: str) -> str | None:
        if fisher_type not in case.reference_fisher_types("kfac"):
            return f"no stored reference answer for {fisher_type!r}"
        return None

    def compute(
        self, case: StoredCase, fisher_type: str, flavour: str, mc_samples: int = 1, seed: int = 0
    ) -> dict[str, Factors]:
        return dict(case.reference_kfac(fisher_type, flavour, self.bias))


class SeparateBias(StoredReference):
    name = "stored-reference-separate-bias"
    bias = "separate"


class DoubledB(StoredReference):
    """Twice the reference: a wrong scale."""

    name = "doubled-b"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        return {layer: Factors(f.A, 2 * f.B, f.bias) for layer, f in result.items()}


class ConvertsToTutorialScale(StoredReference):
    """The reference times ``1/R`` (the ``sum-nll`` convention), declared: passes."""

    name = "sum-nll-declared"
    conventions = Conventions(curvature="sum-nll", empirical_fisher="sum-nll")

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        factor = 1.0 if fisher_type == "forward-only" else 1.0 / case.counts["R"]
        return {layer: Factors(f.A, factor * f.B, f.bias) for layer, f in result.items()}


class Float32(StoredReference):
    """The reference rounded to float32, declared as float32: held to the float32 bound."""

    name = "float32"
    dtype = "float32"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        result = super().compute(case, fisher_type, flavour)
        return {
            layer: Factors(f.A.astype(np.float32), f.B.astype(np.float32), f.bias)
            for layer, f in result.items()
        }


class Float32DeclaredFloat64(Float32):
    """The same float32 answers, declared as float64: held to 1e-10, they fail."""

    name = "float32-declared-float64"
    dtype = "float64"


class RefusesReduce(StoredReference):
    name = "refuses-reduce"

    def refusal(self, case, fisher_type, flavour):
        return "no reduce" if flavour == "reduce" else super().refusal(case, fisher_type, flavour)


class Crashes(StoredReference):
    name = "crashes"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        raise RuntimeError("boom")


class RefusesInCompute(StoredReference):
    name = "refuses-in-compute"

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        raise Refused("decided late")


class LacksFramework:
    """Declares no ``framework`` and no ``dtype``: not a FrameworkCandidate."""

    name = "lacks-framework"
    version = None
    conventions = TUTORIAL

    def refusal(self, case, fisher_type, flavour):
        return None

    def compute(self, case, fisher_type, flavour, mc_samples=1, seed=0):
        return {}
