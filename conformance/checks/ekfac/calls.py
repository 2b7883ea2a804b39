"""The candidate's claimed EKFAC calls: which requests, and why none ran."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from kfac_conformance.checks.base import CaseEntry, CheckSkipped, Measurement, Needs
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import BIAS_MODES, FLAVOURS, Problem, Request
from kfac_conformance.execution.session import Session
from kfac_ref.factors import EKFACFactors

EKFAC_FISHER_TYPES = ("type-2", "empirical", "mc")
MC_SAMPLES = 2
MC_SEED = 3
NEEDS_EKFAC = Needs(approximations=frozenset({"ekfac"}))
# the fuzzer runs the EKFAC properties of a drawn example after the KFAC ones, before MC's
FUZZ_ORDER = 5


def claimed_requests(
    session: Session,
    entry: CaseEntry,
    fisher_type: str,
    first_bias_only: bool = False,
    flavours: Sequence[str] = FLAVOURS,
) -> Iterator[Request]:
    """Every claimed EKFAC request of ``fisher_type`` (each flavour, each bias mode or the first)."""
    for flavour in flavours:
        modes = session.supported_bias_modes(entry, fisher_type, flavour, "ekfac")
        for bias in modes[:1] if first_bias_only else modes:
            yield Request(
                fisher_type,
                flavour,
                mc_samples=MC_SAMPLES,
                seed=MC_SEED,
                bias=bias,
                approximation="ekfac",
            )


def unclaimed_reason(session: Session, entry: CaseEntry, fisher_type: str) -> str:
    """Why no EKFAC request of ``fisher_type`` is claimed (a reason beyond the bias mode first)."""
    problem = session.fresh(entry)
    reasons = [
        session.candidate.capabilities.unsupported(
            problem, Request(fisher_type, flavour, bias=bias, approximation="ekfac")
        )
        for flavour in FLAVOURS
        for bias in BIAS_MODES
    ]
    reasons = [reason for reason in reasons if reason]
    beyond_bias = [reason for reason in reasons if not reason.startswith("not supported: bias")]
    return (beyond_bias or reasons or [f"not supported: EKFAC {fisher_type}"])[0]


@dataclass
class Attempts:
    """The claimed EKFAC calls of one check. A refusal by the candidate skips that request
    only; the check is skipped (with the first reason) when no request ran at all."""

    session: Session
    entry: CaseEntry
    refusals: list[str] = field(default_factory=list)
    ran: bool = False

    def results(
        self, fisher_type: str, first_bias_only: bool = False, flavours: Sequence[str] = FLAVOURS
    ) -> Iterator[tuple[Request, Problem, dict[str, EKFACFactors]]]:
        requests = claimed_requests(
            self.session, self.entry, fisher_type, first_bias_only, flavours
        )
        for request in requests:
            problem = self.session.fresh(self.entry)
            try:
                result = self.session.call(problem, request)
            except CandidateRefused as refusal:
                self.refusals.append(str(refusal))
                continue
            self.ran = True
            yield request, problem, result

    def outcome(self, measurement: Measurement, fisher_type: str = "type-2") -> Measurement:
        if self.ran:
            return measurement
        if self.refusals:
            raise CheckSkipped(self.refusals[0])
        raise CheckSkipped(unclaimed_reason(self.session, self.entry, fisher_type))
