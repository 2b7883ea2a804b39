"""Weight tying: a module applied twice gives its exact block or an exception, never a silent
answer (KFAC assumes each layer is used once)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kfac_conformance.checks.base import CaseEntry, Check, CheckSkipped, Measurement
from kfac_conformance.contract.outcomes import CandidateRefused
from kfac_conformance.contract.problem import Problem, Request
from kfac_conformance.execution.calling import CandidateError
from kfac_conformance.execution.session import Session, compare_blocks, tolerance_for


class TiedTwice(nn.Module):
    """``head(shared(shared(x)))``: one Linear applied twice (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.shared(self.shared(x)))


def tied_problem() -> Problem:
    generator = torch.Generator().manual_seed(0)
    model = TiedTwice().double()
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) / 2)
    X = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    return Problem(model, nn.MSELoss(), [(X, y)], ["shared", "head"], "tied-linear[mse]")


TIED_ENTRY = CaseEntry("tied-linear[mse]", tied_problem)


def _weight_tying(session: Session, entry: CaseEntry):
    problem = session.fresh(entry)
    modes = session.supported_bias_modes(entry, "type-2", "expand")
    if not modes:
        raise CheckSkipped("not supported: type-2 KFAC")
    try:
        result = session.call(problem, Request("type-2", "expand", bias=modes[0]))
    except CandidateError as raised:
        if raised.could_not_import:  # not the exception expected: an error
            raise
        session.side_effects.extend(raised.side_effects)
        return Measurement(details={"raised": str(raised)})
    except CandidateRefused as refused:
        return Measurement(details={"raised": str(refused)})
    measurement = Measurement()
    exact = session.exact(entry, "ggn")
    compare_blocks(
        result,
        exact,
        ["shared"],
        tolerance_for(problem),
        measurement,
        "a module applied twice: raise, or be exact",
    )
    return measurement


CHECKS = [
    Check(
        "weight-tying/exact-or-raises",
        "a module applied twice gives its exact GGN block or an exception",
        "KFAC assumes each layer is used once; silent answers for tied weights are wrong",
        kind="exact",
        measure=_weight_tying,
        own_cases=(TIED_ENTRY,),
    ),
]
