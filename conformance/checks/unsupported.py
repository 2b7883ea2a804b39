"""Unsupported inputs: a layer or loss outside the candidate's claim makes it raise, never
answer (a plausible wrong number is worse than an error)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfac_conformance.checks.base import CaseEntry, Check, CheckFailed, CheckSkipped, Measurement
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.calling import CandidateError, call_candidate
from kfac_conformance.execution.session import Session


class UnsupportedLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))


def _unsupported_layer_problem() -> Problem:
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's global RNG
        torch.manual_seed(0)
        X = torch.randn(3, 4, dtype=torch.float64)
        model = UnsupportedLayerNet().double()
        y = torch.randn(3, 2, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["norm", "head"], "unsupported-layer[layernorm]")


def _unsupported_loss_problem() -> Problem:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        X = torch.randn(3, 4, dtype=torch.float64)
        model = nn.Sequential(nn.Linear(4, 2)).double()
        y = torch.randn(3, 2, dtype=torch.float64)
    return Problem(
        model,
        nn.L1Loss(),
        [(X, y)],
        ["0"],
        "unsupported-loss[l1]",
    )


def _expect_raise(what: str):
    def run(session: Session, entry: CaseEntry):
        problem = session.fresh(entry)
        if session.candidate.capabilities.unsupported(problem, Request()) is None:
            raise CheckSkipped(f"the candidate claims to support {what}")
        try:
            result, side_effects, hygiene = call_candidate(
                session.candidate, problem, Request(), check_capabilities=False
            )
        except CandidateError as raised:
            if raised.could_not_import:  # not the exception expected: an error
                raise
            session.side_effects.extend(raised.side_effects)
            return Measurement(details={"raised": str(raised)})
        except CandidateRefused as refused:
            return Measurement(details={"raised": str(refused)})
        except CheckFailed as invalid:
            raise CheckFailed(
                f"returned an invalid result for {what} it does not claim to support, instead of "
                f"raising ({invalid.message})"
            ) from None
        session.side_effects.extend(side_effects)
        session.hygiene.extend(hygiene)
        raise CheckFailed(
            f"returned an answer for {what} it does not claim to support, instead of raising "
            f"(layers {sorted(result)})"
        )

    return run


UNSUPPORTED_LAYER_ENTRY = CaseEntry("unsupported-layer[layernorm]", _unsupported_layer_problem)
UNSUPPORTED_LOSS_ENTRY = CaseEntry("unsupported-loss[l1]", _unsupported_loss_problem)

SOURCE = "a plausible wrong number is worse than an error"
CHECKS = [
    Check(
        "unsupported/layer",
        "a layer outside the claimed capabilities makes the candidate raise",
        SOURCE,
        kind="guard",
        measure=_expect_raise("a LayerNorm layer"),
        own_cases=(UNSUPPORTED_LAYER_ENTRY,),
    ),
    Check(
        "unsupported/loss",
        "a loss outside the claimed capabilities makes the candidate raise",
        SOURCE,
        kind="guard",
        measure=_expect_raise("L1Loss"),
        own_cases=(UNSUPPORTED_LOSS_ENTRY,),
    ),
]
