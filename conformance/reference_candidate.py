"""The embedded default candidate: ``kfac_ref`` behind the candidate contract."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

import kfac_ref
from kfac_conformance.contract.loading import suite_version
from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.distributed import current_process_group
from kfac_conformance.execution.session import reference_compute
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import SUPPORTED_LAYERS


class ReferenceCandidate:
    name = "kfac_ref"
    version = suite_version()
    capabilities = Capabilities(
        layer_types=frozenset(layer.__name__ for layer in SUPPORTED_LAYERS),
        approximations=frozenset({"kfac", "ekfac"}),
        grouped_convolutions=True,
        distributed=True,
    )

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        # inside a process group the problem is this rank's shard (kfac_ref.data_parallel)
        return reference_compute(problem, request, current_process_group())

    def sampled_labels(self, problem: Problem, request: Request) -> list[Tensor]:
        """The labels its MC Fisher draws for ``request`` (optional contract, see
        :mod:`kfac_conformance.checks.ekfac`)."""
        return kfac_ref.sampled_labels(
            problem.model,
            problem.loss_func,
            problem.batches,
            mc_samples=request.mc_samples,
            seed=request.seed,
            process_group=current_process_group(),
        )
