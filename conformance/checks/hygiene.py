"""Hygiene: the factors a candidate returns are detached and in the problem's dtype.

Every call's result is repaired where it breaks this rule (detached, cast to the problem's
dtype; see :func:`kfac_conformance.execution.calling.validate_result`) so that every other
check judges its values, and notes the breach in its message; here, once per run, the breach
fails a check of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.checks.side_effects import FISHER_TYPE_PREFERENCE
from kfac_conformance.contract.problem import APPROXIMATIONS, Problem
from kfac_conformance.execution.session import Session

# float32 first: on a float64 problem a candidate that always answers in float64 is right
DTYPES = ("float32", "float64")


def _two_linear_problem() -> Problem:
    """Two Linear layers with biases, MSE, one batch: a problem nearly every candidate claims."""
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    X = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(5, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["0", "2"], "two-linear[mse]")


TWO_LINEAR_ENTRY = CaseEntry("two-linear[mse]", _two_linear_problem)


def _first_note(marker: str):
    """A check that fails with the first hygiene note ending in ``marker``, over a call for
    each claimed approximation and dtype."""

    def run(session: Session, entry: CaseEntry) -> Measurement:
        capabilities = session.candidate.capabilities
        unclaimed: list[str] = []
        ran = False
        for approximation in [a for a in APPROXIMATIONS if a in capabilities.approximations]:
            for name in [d for d in DTYPES if d in capabilities.dtypes]:
                dtype = getattr(torch, name)
                try:
                    request = session.first_claimed(
                        entry, FISHER_TYPE_PREFERENCE, approximation=approximation, dtype=dtype
                    )
                    session.hygiene.clear()
                    session.call(session.fresh(entry, dtype=dtype), request)
                except CheckSkipped as skipped:  # this pair is not claimed, or was refused
                    unclaimed.append(str(skipped))
                    continue
                ran = True
                for note in session.hygiene:
                    if note.endswith(marker):
                        raise CheckFailed(f"{request.describe()}, {name}: {note}")
        if not ran:
            raise CheckSkipped(
                unclaimed[0] if unclaimed else f"not supported: dtypes {list(DTYPES)}"
            )
        return Measurement()

    return run


SOURCE = (
    "the candidate contract: results are plain tensors in the problem's dtype "
    "(README, 'Plugging in your implementation')"
)
CHECKS = [
    Check(
        "hygiene/detached",
        "every factor returned is detached: it neither requires grad nor carries an autograd "
        "graph (a graph keeps the candidate's activations alive, and backward through it is "
        "meaningless)",
        SOURCE,
        kind="guard",
        measure=_first_note("detach it"),
        own_cases=(TWO_LINEAR_ENTRY,),
    ),
    Check(
        "hygiene/problem-dtype",
        "every factor returned is in the problem's dtype: float32 factors for a float32 "
        "problem, float64 for a float64 one",
        SOURCE,
        kind="guard",
        measure=_first_note("return the problem's dtype"),
        own_cases=(TWO_LINEAR_ENTRY,),
    ),
]
