"""Hostile candidates: each computes kfac_ref's answer but misbehaves in exactly one way.

Importable (``import hostile`` from the tests) and loadable by the CLI
(``--candidate tests/hostile.py:Raising``). ``times`` limits the misbehaviour to the first
calls, so that a run can show the checks after it still pass.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping

import torch

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.session import reference_compute as reference
from kfac_ref.factors import KroneckerFactors

HANG_SECONDS = 30  # bounded, so that a leaked thread ends on its own
EXIT_CODE = 17
CHILD_PID_FILE = "hostile-child.pid"


class Hostile:
    """kfac_ref behind the contract, misbehaving on the first ``times`` calls (all if None)."""

    name = "hostile"
    capabilities = Capabilities()

    def __init__(self, times: int | None = None) -> None:
        self.times = times
        self.calls = 0

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        self.calls += 1
        if self.times is not None and self.calls > self.times:
            return reference(problem, request)
        return self.misbehave(problem, request)

    def misbehave(self, problem: Problem, request: Request) -> object:
        raise NotImplementedError


class Correct(Hostile):
    """The control: kfac_ref with no misbehaviour."""

    name = "correct"

    def __init__(self) -> None:
        super().__init__(times=0)


class Raising(Hostile):
    def misbehave(self, problem, request):
        raise ValueError("hostile refusal")


class SysExiting(Hostile):
    def misbehave(self, problem, request):
        raise SystemExit(3)


class Hanging(Hostile):
    def misbehave(self, problem, request):
        time.sleep(HANG_SECONDS)
        return reference(problem, request)


class ExitingProcess(Hostile):
    def misbehave(self, problem, request):
        os._exit(EXIT_CODE)


class Segfaulting(Hostile):
    """Reads address 0, as a broken C extension might: the process dies of SIGSEGV."""

    def misbehave(self, problem, request):
        ctypes.string_at(0)


class ForksThenExits(Hostile):
    """Leaves a child process (which keeps every inherited file open, and whose pid it writes
    to :data:`CHILD_PID_FILE` in the working directory) and ends its own."""

    def misbehave(self, problem, request):
        child = os.fork()
        if child == 0:
            time.sleep(HANG_SECONDS)
            os._exit(0)
        with open(CHILD_PID_FILE, "w") as file:
            file.write(str(child))
        os._exit(EXIT_CODE)


def loads_only_in_the_main_process() -> Hostile:
    """A candidate factory that fails in any child process, as one whose backend does not
    survive a fork might: the supervised worker cannot load it."""
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("no backend in a child process")
    return Correct()


class ExitingOnSecondCall(Hostile):
    """Correct once, then kills its process: a run without isolation dies mid-way."""

    def misbehave(self, problem, request):
        if self.calls == 1:
            return reference(problem, request)
        os._exit(EXIT_CODE)


class ExitingOnOneCase(Hostile):
    """Correct except on :attr:`CASE`, where it kills its process: the checks of the other
    cases, after the crash, must still pass."""

    CASE = "mlp[tanh-ce-batch]"

    def misbehave(self, problem, request):
        if problem.case_id == self.CASE:
            os._exit(EXIT_CODE)
        return reference(problem, request)


class MutatesThenRaises(Hostile):
    def misbehave(self, problem, request):
        with torch.no_grad():
            next(problem.model.parameters()).add_(1.0)
        raise RuntimeError("hostile failure after a mutation")


class _Corrupting(Hostile):
    """Returns kfac_ref's result passed through :meth:`corrupt`."""

    def misbehave(self, problem, request):
        return self.corrupt(dict(reference(problem, request)), problem)

    def corrupt(self, result: dict, problem: Problem) -> object:
        raise NotImplementedError


def _replace_first_A(result: dict, problem: Problem, A: object) -> dict:
    """``result`` with the first layer's ``A`` replaced, bypassing KroneckerFactors' own checks
    (a candidate can build its result any way it likes)."""
    first = problem.layers[0]
    factors = object.__new__(KroneckerFactors)
    for name, value in (("A", A), ("B", result[first].B), ("bias", result[first].bias)):
        object.__setattr__(factors, name, value)
    return {**result, first: factors}


class NotAMapping(_Corrupting):
    def corrupt(self, result, problem):
        return list(result.values())


class MissingLayer(_Corrupting):
    def corrupt(self, result, problem):
        return {layer: f for layer, f in result.items() if layer != problem.layers[-1]}


class ExtraLayer(_Corrupting):
    def corrupt(self, result, problem):
        return {**result, "ghost": result[problem.layers[0]]}


class TupleFactors(_Corrupting):
    def corrupt(self, result, problem):
        return {layer: (f.A, f.B) for layer, f in result.items()}


class NumpyFactor(_Corrupting):
    def corrupt(self, result, problem):
        return _replace_first_A(result, problem, result[problem.layers[0]].A.numpy())


class WrongShape(_Corrupting):
    def corrupt(self, result, problem):
        A = result[problem.layers[0]].A
        return _replace_first_A(result, problem, torch.nn.functional.pad(A, (0, 1, 0, 1)))


class NaNFactor(_Corrupting):
    def corrupt(self, result, problem):
        A = result[problem.layers[0]].A.clone()
        A[0, 0] = float("nan")
        return _replace_first_A(result, problem, A)


class InfFactor(_Corrupting):
    def corrupt(self, result, problem):
        A = result[problem.layers[0]].A.clone()
        A[0, 0] = float("inf")
        A[-1, -1] = float("-inf")
        return _replace_first_A(result, problem, A)


class ComplexFactor(_Corrupting):
    def corrupt(self, result, problem):
        return _replace_first_A(result, problem, result[problem.layers[0]].A.to(torch.complex128))


class IntegerFactor(_Corrupting):
    def corrupt(self, result, problem):
        return _replace_first_A(result, problem, result[problem.layers[0]].A.to(torch.int64))


class WrongDtype(_Corrupting):
    def corrupt(self, result, problem):
        return _replace_first_A(result, problem, result[problem.layers[0]].A.float())


class WrongDevice(_Corrupting):
    """A factor on the ``meta`` device stands in for a GPU tensor on a CPU-only machine."""

    def corrupt(self, result, problem):
        return _replace_first_A(result, problem, result[problem.layers[0]].A.to("meta"))


class RequiresGrad(_Corrupting):
    def corrupt(self, result, problem):
        A = result[problem.layers[0]].A.clone().requires_grad_()
        return _replace_first_A(result, problem, A)


class CarriesGraph(_Corrupting):
    def corrupt(self, result, problem):
        weight = problem.model.get_submodule(problem.layers[0]).weight
        A = result[problem.layers[0]].A + 0 * weight.sum()
        return _replace_first_A(result, problem, A)


class MutatesParameters(Hostile):
    def misbehave(self, problem, request):
        result = reference(problem, request)
        with torch.no_grad():
            next(problem.model.parameters()).add_(1.0)
        return result


class LeavesMutatingThread(Hostile):
    """Returns a correct result but leaves a thread that keeps writing to the parameters (for
    :data:`HANG_SECONDS`), as an asynchronous optimizer step might."""

    def misbehave(self, problem, request):
        result = reference(problem, request)
        parameter = next(problem.model.parameters())
        wrote = threading.Event()

        def keep_writing() -> None:
            deadline = time.monotonic() + HANG_SECONDS
            while time.monotonic() < deadline:
                with torch.no_grad():
                    parameter.add_(1.0)
                wrote.set()
                time.sleep(0.001)

        threading.Thread(target=keep_writing, daemon=True).start()
        wrote.wait()  # so that the harness sees at least one write
        return result


class LeavesHook(Hostile):
    def misbehave(self, problem, request):
        problem.model.get_submodule(problem.layers[0]).register_forward_hook(
            lambda module, inputs, output: None
        )
        return reference(problem, request)


class ChangesDefaultDtype(Hostile):
    def misbehave(self, problem, request):
        other = torch.float32 if torch.get_default_dtype() == torch.float64 else torch.float64
        torch.set_default_dtype(other)
        return reference(problem, request)


class UsesGlobalRNG(Hostile):
    def misbehave(self, problem, request):
        torch.rand(1)
        return reference(problem, request)


class ReseedsGlobalRNG(Hostile):
    def misbehave(self, problem, request):
        torch.manual_seed(1234)
        return reference(problem, request)


class LeavesGradModeOff(Hostile):
    def misbehave(self, problem, request):
        result = reference(problem, request)
        torch.set_grad_enabled(False)
        return result


class LeavesEvalMode(Hostile):
    def misbehave(self, problem, request):
        result = reference(problem, request)
        problem.model.eval()
        return result


class MutatesData(Hostile):
    def misbehave(self, problem, request):
        result = reference(problem, request)
        problem.batches[0][0].mul_(2.0)
        return result
