"""Pitfalls of layout, bias handling, precision and state."""

from __future__ import annotations

import copy

import torch

from kfac_conformance.contract.problem import Problem, Request
from kfac_ref import layers
from kfac_ref.factors import KroneckerFactors

from .base import Mutant, reference_compute, replace


class KroneckerOrderSwapped(Mutant):
    """A and B exchanged (the block is kron(A, B): column-major flattening of the weight).

    The result keeps valid shapes only where A and B have the same size, so only such layers
    are swapped. Killed by exactness on deep-linear's bias-free 5x5 layer, where the
    diagnosis names the swapped order (elsewhere result validation rejects the shapes).
    """

    killers = ("exactness/type-2-expand[deep-linear[mse-sum-1batch]]",)
    diagnosis = "Kronecker order swapped"

    def compute(self, problem: Problem, request: Request):
        result = reference_compute(problem, request)
        return {
            layer: KroneckerFactors(f.B, f.A, f.bias) if f.A.shape == f.B.shape else f
            for layer, f in result.items()
        }


class JointOnesFirst(Mutant):
    """With bias='joint' the constant one is put first in the layer input, not last, so the
    bias is read as the weight's first column instead of its last.

    Killed by exactness with bias='joint'; the diagnosis names the misplaced ones row.
    """

    killers = ("exactness/type-2-expand[deep-linear[mse-sum-1batch]]",)
    diagnosis = "ones row misplaced"

    def patches(self, request: Request):
        def ones_first(positions: torch.Tensor) -> torch.Tensor:
            ones = positions.new_ones((*positions.shape[:-1], 1))
            return torch.cat([ones, positions], dim=-1)

        return [replace(layers, "with_ones", ones_first)]


class JointCrossTermsDropped(Mutant):
    """bias='joint' answered with the separate block: the weight-bias entries of A are zero.

    Killed by exactness with bias='joint' (the cross terms are part of the exact block there);
    the diagnosis names the missing cross terms.
    """

    killers = ("exactness/type-2-expand[deep-linear[mse-sum-1batch]]",)
    diagnosis = "weight-bias cross terms are zero"

    def compute(self, problem: Problem, request: Request):
        result = reference_compute(problem, request)
        dropped = {}
        for layer, factors in result.items():
            A = factors.A
            if factors.bias == "joint":
                A = A.clone()
                A[:-1, -1] = 0
                A[-1, :-1] = 0
            dropped[layer] = KroneckerFactors(A, factors.B, factors.bias)
        return dropped


class Float32Internally(Mutant):
    """A float64 problem computed in float32 and cast back: the answer has the right dtype but
    only single-precision accuracy.

    Killed by exactness (float64 cases are held to 1e-10); the diagnosis names float32
    round-off.
    """

    killers = ("exactness/type-2-expand[deep-linear[mse-sum-1batch]]",)
    diagnosis = "float32 round-off level"

    def compute(self, problem: Problem, request: Request):
        single = Problem(
            copy.deepcopy(problem.model),
            problem.loss_func,
            list(problem.batches),
            problem.layers,
            problem.case_id,
        ).to(dtype=torch.float32)
        result = reference_compute(single, request)
        return {layer: factors.to(dtype=problem.dtype) for layer, factors in result.items()}


class AccumulatesState(Mutant):
    """Factors kept on the candidate and added to on every call (running sums never reset), so
    the second call on the same problem returns twice A and twice B.

    Killed by side-effects/repeatable, whose diagnosis says the second call differs from the
    first.
    """

    killers = ("side-effects/repeatable",)
    diagnosis = "state kept across calls"

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[tuple, KroneckerFactors] = {}

    def compute(self, problem: Problem, request: Request):
        result = reference_compute(problem, request)
        for layer, factors in result.items():
            key = (problem.case_id, request, layer, str(problem.dtype))
            previous = self.sums.get(key)
            if previous is not None:
                factors = KroneckerFactors(
                    previous.A + factors.A, previous.B + factors.B, factors.bias
                )
            self.sums[key] = factors
        return {
            layer: self.sums[(problem.case_id, request, layer, str(problem.dtype))]
            for layer in result
        }
