"""Parity: the same problem on CUDA and CPU, and in float32 and float64, gives the same KFAC."""

from __future__ import annotations

import torch
from kfac_conformance.checks.base import CaseEntry, Check, CheckSkipped, Measurement
from kfac_conformance.compare import round_off_tolerance
from kfac_conformance.problem import Request
from kfac_conformance.session import Session, compare_blocks


def _request(session: Session, entry: CaseEntry, problem) -> Request:
    for fisher_type in ("type-2", "empirical", "forward-only"):
        for bias in ("separate", "joint"):
            request = Request(fisher_type, "expand", bias=bias)
            if session.candidate.capabilities.unsupported(problem, request) is None:
                return request
    raise CheckSkipped(
        "not supported: no deterministic fisher type claimed on this device and dtype"
    )


def _compare(
    session: Session,
    entry: CaseEntry,
    device: str,
    dtype: torch.dtype,
    tolerance: float,
    context: str,
):
    baseline_problem = session.fresh(entry, device="cpu", dtype=torch.float64)
    other_problem = session.fresh(entry, device=device, dtype=dtype)
    request = _request(session, entry, other_problem)
    baseline = session.call(baseline_problem, request)
    other = session.call(other_problem, request)
    targets = {layer: factors.to_dense().to(device) for layer, factors in baseline.items()}
    measurement = Measurement(details={"device": device, "dtype": str(dtype)})
    compare_blocks(other, targets, baseline_problem.layers, tolerance, measurement, context)
    return measurement


def _cuda_cpu(session: Session, entry: CaseEntry):
    if not torch.cuda.is_available():
        raise CheckSkipped("CUDA is not available")
    return _compare(
        session,
        entry,
        "cuda",
        torch.float64,
        1e3 * round_off_tolerance(torch.float64),
        "CUDA float64 against CPU float64",
    )


def _float32_float64(session: Session, entry: CaseEntry):
    return _compare(
        session,
        entry,
        "cpu",
        torch.float32,
        round_off_tolerance(torch.float32),
        "float32 against float64",
    )


CHECKS = [
    Check(
        "parity/cuda-cpu",
        "the problem on CUDA gives the CPU's KFAC (float64, tolerance 1e-7)",
        "device independence",
        lambda entry: entry.case is None or not entry.case.exact,
        _cuda_cpu,
    ),
    Check(
        "parity/float32-float64",
        "the problem in float32 gives the float64 KFAC to float32 accuracy (1e-4)",
        "dtype independence",
        lambda entry: entry.case is None or not entry.case.exact,
        _float32_float64,
    ),
]
