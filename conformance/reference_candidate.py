"""The embedded default candidate: ``kfac_ref`` behind the candidate contract."""

from __future__ import annotations

from collections.abc import Mapping

from kfac_conformance.loading import suite_version
from kfac_conformance.problem import Capabilities, Problem, Request
from kfac_conformance.session import reference_compute
from kfac_ref.factors import KroneckerFactors


class ReferenceCandidate:
    name = "kfac_ref"
    version = suite_version()
    capabilities = Capabilities()

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        return reference_compute(problem, request)
