"""What a mutant is: the reference with one deliberate mistake, and the checks meant to kill it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from unittest import mock

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.session import reference_compute
from kfac_ref import layers
from kfac_ref.factors import KroneckerFactors
from kfac_ref.layers import LayerRule


class Mutant:
    """The reference candidate with one pitfall; subclasses override :meth:`patches` or
    :meth:`compute`.

    ``killers`` name the checks (``check_id``) or items (``check_id[case_id]``) of the default
    profile expected to kill the mutant; the zoo test runs exactly these, so a mutant that
    survives them is a missing check. Only a failure kills: an item that errors is a defect of
    the suite or of the mutant. The class docstring states the pitfall.
    """

    killers: tuple[str, ...] = ()
    # a phrase the diagnosis of at least one failing killer carries (or, for a constant
    # factor, "= <name>" as the killers' scale summary names it); None where no check names
    # the pitfall (the failure alone says that something is wrong)
    diagnosis: str | None = None
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.name = f"zoo:{type(self).__name__}"

    @classmethod
    def pitfall(cls) -> str:
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

    def patches(self, request: Request) -> list[AbstractContextManager]:
        """Context managers that plant the bug inside ``kfac_ref`` for one call."""
        return []

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        with planted(self.patches(request)):
            return reference_compute(problem, request)


@contextmanager
def planted(patches: list[AbstractContextManager]) -> Iterator[None]:
    """Enter every patch; all are undone on exit, whatever happens inside."""
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


def replace(target: object, attribute: str, new: object) -> AbstractContextManager:
    return mock.patch.object(target, attribute, new)


def rules_replaced(
    change: Callable[[tuple[type, str], LayerRule], LayerRule],
) -> AbstractContextManager:
    """Replace every entry of ``kfac_ref``'s layer registry by ``change(key, rule)``; the
    registry is restored on exit."""
    return mock.patch.dict(
        layers.REGISTRY, {key: change(key, rule) for key, rule in layers.REGISTRY.items()}
    )
