"""Parity: the same problem on CUDA and CPU, and in float32 and float64, gives the same KFAC.

The baseline is always the candidate's own float64 answer on the CPU, so parity isolates the
device or the dtype: it says nothing about correctness, which the other families check.
"""

from __future__ import annotations

import torch

from kfac_conformance.checks.base import CaseEntry, Check, CheckSkipped, Measurement
from kfac_conformance.checks.ekfac.calls import EKFAC_FISHER_TYPES
from kfac_conformance.checks.invariance import DETERMINISTIC_FISHER_TYPES
from kfac_conformance.comparison.blocks import round_off_tolerance
from kfac_conformance.contract.problem import APPROXIMATIONS, BIAS_MODES, Problem, Request
from kfac_conformance.execution.session import Session, compare_blocks

# CUDA float64 reductions sum in another order than the CPU's; 1e3 round-offs leaves room
# for that and for ill-conditioned sums, while a real device bug is off by far more.
CUDA_CPU_TOLERANCE = 1e3 * round_off_tolerance(torch.float64)
FLOAT32_TOLERANCE = round_off_tolerance(torch.float32)


def _requests(session: Session, problems: list[Problem]) -> list[Request]:
    """For every deterministic fisher type and approximation claimed for every problem of
    ``problems``, its first such bias mode."""
    capabilities = session.candidate.capabilities
    for problem in problems:  # a skip names a claim of the problems themselves first
        reason = capabilities.unsupported_problem(problem)
        if reason is not None:
            raise CheckSkipped(reason)
    requests, reasons = [], []
    for approximation in APPROXIMATIONS:
        for fisher_type in DETERMINISTIC_FISHER_TYPES:
            if approximation == "ekfac" and fisher_type not in EKFAC_FISHER_TYPES:
                continue
            for bias in BIAS_MODES:
                request = Request(fisher_type, "expand", bias=bias, approximation=approximation)
                why = [capabilities.unsupported(p, request) for p in problems]
                if not any(why):
                    requests.append(request)
                    break
                reasons.extend(reason for reason in why if reason)
    if not requests:
        raise CheckSkipped(
            "no deterministic fisher type is claimed on both sides of the comparison: "
            + "; ".join(dict.fromkeys(reasons))
        )
    return requests


def _compare(
    session: Session,
    entry: CaseEntry,
    baseline_device: str,
    device: str,
    dtype: torch.dtype,
    tolerance: float,
    context: str,
) -> Measurement:
    measurement = Measurement(details={"device": device, "dtype": str(dtype)})
    problems = [
        session.fresh(entry, device=baseline_device, dtype=torch.float64),
        session.fresh(entry, device=device, dtype=dtype),
    ]
    for request in _requests(session, problems):
        baseline_problem = session.fresh(entry, device=baseline_device, dtype=torch.float64)
        baseline = session.call(baseline_problem, request)
        other = session.call(session.fresh(entry, device=device, dtype=dtype), request)
        targets = {layer: factors.to_dense().to(device) for layer, factors in baseline.items()}
        compare_blocks(
            other,
            targets,
            baseline_problem.layers,
            tolerance,
            measurement,
            f"{context}, {request.describe()}",
        )
    return measurement


def _cuda_cpu(session: Session, entry: CaseEntry) -> Measurement:
    if not torch.cuda.is_available():
        raise CheckSkipped("CUDA is not available on this machine")
    return _compare(
        session,
        entry,
        "cpu",
        "cuda",
        torch.float64,
        CUDA_CPU_TOLERANCE,
        "CUDA float64 against CPU float64",
    )


def _float32_float64(session: Session, entry: CaseEntry) -> Measurement:
    device = session.device
    return _compare(
        session,
        entry,
        device,
        device,
        torch.float32,
        FLOAT32_TOLERANCE,
        f"float32 against float64 on {device}",
    )


def _inexact_or_custom(entry: CaseEntry) -> bool:
    return entry.case is None or not entry.case.exact


CHECKS = [
    Check(
        "parity/cuda-cpu",
        f"the problem on CUDA gives the CPU's KFAC (float64, tolerance {CUDA_CPU_TOLERANCE:g}), "
        "for every claimed deterministic fisher type, KFAC and EKFAC; skipped where CUDA is absent",
        "device independence",
        kind="invariance",
        measure=_cuda_cpu,
        cases=_inexact_or_custom,
    ),
    Check(
        "parity/float32-float64",
        f"the problem in float32 gives the float64 KFAC to float32 accuracy "
        f"(tolerance {FLOAT32_TOLERANCE:g}) on the run's device, for every claimed "
        "deterministic fisher type, KFAC and EKFAC",
        "dtype independence",
        kind="invariance",
        measure=_float32_float64,
        cases=_inexact_or_custom,
    ),
]
