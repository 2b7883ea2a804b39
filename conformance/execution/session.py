"""The context a check runs in: fresh problems, candidate calls, and cached exact answers."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import kfac_ref
from kfac_conformance.checks.base import CaseEntry, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.comparison.blocks import (
    diagnose,
    kfac_pattern,
    relative_error,
    restrict,
    round_off_tolerance,
)
from kfac_conformance.comparison.evidence import block_evidence
from kfac_conformance.comparison.scale_records import answer_record
from kfac_conformance.contract import conventions
from kfac_conformance.contract.problem import BIAS_MODES, Candidate, Problem, Request
from kfac_conformance.execution.calling import CandidateError, call_candidate
from kfac_conformance.execution.profiles import PROFILES, Profile
from kfac_conformance.oracle import blocks as oracle
from kfac_ref.factors import EKFACFactors, KroneckerFactors


@dataclass
class Session:
    candidate: Candidate
    profile: Profile = PROFILES["default"]
    device: str = "cpu"
    launcher: str = "fork"  # how the distributed checks start their ranks (RunOptions.launcher)
    side_effects: list[str] = field(default_factory=list)
    # every converted answer's scale record, for the run's scale summary (see scale_records.py)
    answers: list[dict] = field(default_factory=list)
    hygiene: list[str] = field(default_factory=list)
    _exact_cache: dict = field(default_factory=dict)
    _reference_cache: dict = field(default_factory=dict)

    def fresh(
        self, entry: CaseEntry, device: str | None = None, dtype: torch.dtype | None = None
    ) -> Problem:
        problem = entry.make_problem()
        return problem.to(device=device or self.device, dtype=dtype)

    def call(self, problem: Problem, request: Request) -> dict[str, KroneckerFactors]:
        """The candidate's answer, converted from its declared conventions to the tutorial's.

        This is the one place a declared convention is applied: every check sees blocks in
        the suite's scale (:mod:`kfac_conformance.contract.conventions`).
        """
        # read before the call: a candidate may change the problem it is given
        quantities = problem.scale_quantities()
        result, side_effects, hygiene = call_candidate(self.candidate, problem, request)
        self.side_effects.extend(side_effects)
        self.hygiene.extend(hygiene)
        return self.converted(result, request, quantities)

    def converted(
        self, result: dict[str, KroneckerFactors], request: Request, quantities: dict[str, object]
    ) -> dict[str, KroneckerFactors]:
        """A validated ``result`` for a problem of ``quantities`` in the suite's scale (and its
        scale recorded): what :meth:`call` returns, for answers computed elsewhere (the ranks
        of a process group)."""
        answer = answer_record(request.fisher_type, quantities)
        if answer is not None:
            self.answers.append(answer)
        scale = conventions.scale(
            self.candidate.capabilities.conventions, request.fisher_type, quantities
        )
        if scale == 1.0:
            return result
        return {layer: factors.scaled(1.0 / scale) for layer, factors in result.items()}

    def supported_bias_modes(
        self,
        entry: CaseEntry,
        fisher_type: str,
        flavour: str,
        approximation: str = "kfac",
        dtype: torch.dtype | None = None,
    ) -> list[str]:
        """The bias modes the candidate claims for the request on the entry's problem (in
        ``dtype`` if given).

        Raises :class:`CheckSkipped` naming the problem's own claim the candidate lacks (a
        layer type, the loss, ...): no request is claimed then, and that is the reason.
        """
        problem = self.fresh(entry, dtype=dtype)
        capabilities = self.candidate.capabilities
        reason = capabilities.unsupported_problem(problem)
        if reason is not None:
            raise CheckSkipped(reason)
        return [
            bias
            for bias in BIAS_MODES
            if capabilities.unsupported(
                problem, Request(fisher_type, flavour, bias=bias, approximation=approximation)
            )
            is None
        ]

    def first_claimed(
        self,
        entry: CaseEntry,
        fisher_types: Sequence[str],
        flavour: str = "expand",
        approximation: str = "kfac",
        dtype: torch.dtype | None = None,
    ) -> Request:
        """The first of ``fisher_types`` the candidate claims for the entry, with a claimed bias."""
        for fisher_type in fisher_types:
            modes = self.supported_bias_modes(entry, fisher_type, flavour, approximation, dtype)
            if modes:
                return Request(fisher_type, flavour, bias=modes[0], approximation=approximation)
        raise CheckSkipped(self.why_unclaimed(fisher_types, flavour, approximation))

    def why_unclaimed(
        self, fisher_types: Sequence[str], flavour: str = "expand", approximation: str = "kfac"
    ) -> str:
        """Why no request of ``fisher_types`` is claimed on a problem the candidate claims:
        the flavour or approximation every such request has, else the fisher types."""
        capabilities = self.candidate.capabilities
        for what, value, claimed in (
            ("approximations", approximation, capabilities.approximations),
            ("flavours", flavour, capabilities.flavours),
        ):
            if value not in claimed:
                return f"not supported: {what} {[value]}"
        return f"not supported: none of the fisher types {list(fisher_types)} is claimed"

    def exact(self, entry: CaseEntry, curvature: str) -> dict[str, Tensor]:
        """Exact blocks of every layer of the entry's problem, in float64 on the CPU (cached)."""
        key = (entry.id, curvature)
        if key in self._exact_cache:
            return self._exact_cache[key]
        if curvature in entry.stored_exact:
            blocks = dict(entry.stored_exact[curvature]())
        else:
            problem = entry.make_problem().to(device="cpu", dtype=torch.float64)
            blocks = oracle.exact_blocks(
                problem.model, problem.loss_func, problem.batches, problem.layers, curvature
            )
        self._exact_cache[key] = blocks
        return blocks

    def reference(self, entry: CaseEntry, request: Request) -> dict[str, KroneckerFactors]:
        """``kfac_ref``'s answer for the entry's problem in float64 on the CPU (cached)."""
        key = (entry.id, request)
        if key not in self._reference_cache:
            problem = entry.make_problem().to(device="cpu", dtype=torch.float64)
            self._reference_cache[key] = reference_compute(problem, request)
        return self._reference_cache[key]


def reference_compute(
    problem: Problem, request: Request, process_group: object | None = None
) -> dict[str, KroneckerFactors] | dict[str, EKFACFactors]:
    """``kfac_ref``'s answer; with a ``process_group``, ``problem`` is this rank's shard."""
    compute = kfac_ref.compute_ekfac if request.approximation == "ekfac" else kfac_ref.compute_kfac
    return compute(
        problem.model,
        problem.loss_func,
        problem.batches,
        fisher_type=request.fisher_type,
        kfac_approx=request.kfac_approx,
        mc_samples=request.mc_samples,
        seed=request.seed,
        bias=request.bias,
        layers=problem.layers,
        process_group=process_group,
    )


def dense_blocks(result: dict[str, KroneckerFactors], scale: float = 1.0) -> dict[str, Tensor]:
    """Every layer's ``to_dense()`` block (times ``scale``), as targets for :func:`compare_blocks`."""
    return {layer: scale * factors.to_dense() for layer, factors in result.items()}


def compare_blocks(
    result: dict[str, KroneckerFactors],
    targets: dict[str, Tensor],
    layers: Sequence[str],
    tolerance: float,
    measurement: Measurement,
    context: str,
    alternatives: dict[str, dict[str, Tensor]] | None = None,
) -> None:
    """Fail with a diagnosis unless every layer's block matches its target within ``tolerance``."""
    for layer in layers:
        factors = result[layer]
        target = restrict(targets[layer], kfac_pattern(factors))
        error = relative_error(factors.to_dense(), target)
        measurement.record(error, tolerance)
        if not error <= tolerance:
            layer_alternatives = {
                name: blocks[layer] for name, blocks in (alternatives or {}).items()
            }
            diagnosis = diagnose(factors, targets[layer], tolerance, layer_alternatives)
            raise CheckFailed(
                f"layer {layer!r} ({context}): relative error {error:.3g} > tolerance {tolerance:.1g}",
                observed=error,
                tolerance=tolerance,
                diagnosis=diagnosis,
                evidence=block_evidence(layer, factors, target),
            )


def run_for_bias_modes(
    session: Session, entry: CaseEntry, fisher_type: str, flavour: str, body
) -> Measurement:
    """Run ``body(bias)`` for each bias mode the candidate claims; skip when it claims none."""
    modes = session.supported_bias_modes(entry, fisher_type, flavour)
    if not modes:
        problem = session.fresh(entry)
        raise CheckSkipped(
            session.candidate.capabilities.unsupported(problem, Request(fisher_type, flavour))
        )
    measurement = Measurement()
    for bias in modes:
        body(bias, measurement)
    return measurement


def with_reduction(problem: Problem, reduction: str) -> Problem:
    problem.loss_func = copy.copy(problem.loss_func)
    problem.loss_func.reduction = reduction
    return problem


def tolerance_for(problem: Problem) -> float:
    return round_off_tolerance(problem.dtype)


__all__ = ["CandidateError", "Profile", "Session", "compare_blocks", "run_for_bias_modes"]
