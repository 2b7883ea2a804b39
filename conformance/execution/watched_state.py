"""The state a candidate call can change, as tables of small entries.

Each entry (:class:`Watched`) watches one kind of state of a subject: it takes a snapshot,
compares the state now with it (``None`` when nothing changed, else the change), restores
the snapshot and words the change. A :class:`Snapshot` runs a table in order, so the
messages come in table order. Here: :data:`GLOBAL_STATE`, process-wide torch state (the
subject is ``None``); in :mod:`~kfac_conformance.execution.watched_problem`: the model, data
and loss of one problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.modules.module as module_globals
from torch import Tensor

Subject = TypeVar("Subject", contravariant=True)
Saved = TypeVar("Saved")
Change = TypeVar("Change")

GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)


class Watched(Protocol[Subject, Saved, Change]):
    """One kind of state of a subject: snapshot, compare, restore, message."""

    def take(self, subject: Subject) -> Saved: ...

    def compare(self, subject: Subject, saved: Saved) -> Change | None: ...

    def restore(self, subject: Subject, saved: Saved, change: Change) -> None: ...

    def message(self, change: Change) -> str: ...


class Snapshot:
    """What a table of entries saw of ``subject`` at one moment; restorable."""

    def __init__(self, entries: Sequence[Watched], subject: Any) -> None:
        self._subject = subject
        self._saved = [(entry, entry.take(subject)) for entry in entries]

    def restore_and_report(self) -> list[str]:
        """Undo what changed since the snapshot; one message per kind of change."""
        changes = []
        for entry, saved in self._saved:
            change = entry.compare(self._subject, saved)
            if change is not None:
                changes.append(entry.message(change))
                entry.restore(self._subject, saved, change)
        return changes


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass(frozen=True)
class Setting:
    """A global setting read by ``get`` and written by ``put``; the change is the new value."""

    get: Callable[[], Any]
    put: Callable[[Any], object]
    describe: Callable[[Any], str]
    same: Callable[[Any, Any], bool] = lambda now, before: now == before

    def take(self, subject: None) -> Any:
        return self.get()

    def compare(self, subject: None, saved: Any) -> Any:
        now = self.get()
        return None if self.same(now, saved) else now

    def restore(self, subject: None, saved: Any, change: Any) -> None:
        self.put(saved)

    def message(self, change: Any) -> str:
        return self.describe(change)


class CudaRNG:
    """The CUDA RNG states, watched only once CUDA is in use (reading them initialises it)."""

    def take(self, subject: None) -> list[Tensor] | None:
        return torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def compare(self, subject: None, saved: list[Tensor] | None) -> bool | None:
        if saved is None:
            return None
        now = torch.cuda.get_rng_state_all()
        changed = any(not torch.equal(a, b) for a, b in zip(now, saved, strict=True))
        return True if changed else None

    def restore(self, subject: None, saved: list[Tensor], change: bool) -> None:
        torch.cuda.set_rng_state_all(saved)

    def message(self, change: bool) -> str:
        return "used or changed the global CUDA RNG state"


class GlobalHooks:
    """Module hooks registered globally; the change maps each hook dict to its extra keys."""

    def take(self, subject: None) -> dict[str, list]:
        return {name: list(getattr(module_globals, name, {})) for name in GLOBAL_HOOK_DICTS}

    def compare(self, subject: None, saved: dict[str, list]) -> dict[str, list] | None:
        extras = {}
        for name, before in saved.items():
            extra = [
                key for key in list(getattr(module_globals, name, None) or {}) if key not in before
            ]
            if extra:
                extras[name] = extra
        return extras or None

    def restore(self, subject: None, saved: dict[str, list], change: dict[str, list]) -> None:
        for name, keys in change.items():
            hooks = getattr(module_globals, name)
            for key in keys:
                del hooks[key]

    def message(self, change: dict[str, list]) -> str:
        return f"left global module hooks {list(change)}"


DEFAULT_DTYPE = Setting(
    torch.get_default_dtype,
    torch.set_default_dtype,
    lambda now: f"changed the default dtype to {now}",
)
RNG = Setting(
    torch.get_rng_state,
    torch.set_rng_state,
    lambda now: "used or changed the global RNG state",
    same=torch.equal,
)
CUDA_RNG = CudaRNG()
GRAD_MODE = Setting(
    torch.is_grad_enabled, torch.set_grad_enabled, lambda now: f"left grad mode {_on_off(now)}"
)
ANOMALY_DETECTION = Setting(
    torch.is_anomaly_enabled,
    torch.set_anomaly_enabled,
    lambda now: f"left anomaly detection {_on_off(now)}",
)
DETERMINISTIC_ALGORITHMS = Setting(
    torch.are_deterministic_algorithms_enabled,
    torch.use_deterministic_algorithms,
    lambda now: "changed torch.use_deterministic_algorithms",
)
GLOBAL_MODULE_HOOKS = GlobalHooks()
GLOBAL_STATE: tuple[Watched, ...] = (
    DEFAULT_DTYPE,
    RNG,
    CUDA_RNG,
    GRAD_MODE,
    ANOMALY_DETECTION,
    DETERMINISTIC_ALGORITHMS,
    GLOBAL_MODULE_HOOKS,
)


class GlobalState(Snapshot):
    """Process-wide torch state a candidate can change (:data:`GLOBAL_STATE`); restorable."""

    @classmethod
    def take(cls) -> GlobalState:
        return cls(GLOBAL_STATE, None)


# The state of torch's global generators every item starts from.
ITEM_SEED = 0


def seeded_baseline(caller: GlobalState | None = None) -> GlobalState:
    """The baseline every item of a run starts from: global torch state as it is now, with
    torch's global generators seeded with :data:`ITEM_SEED`. Torch seeds them at random in
    each process, so without this a candidate that draws from them (against the contract)
    would get another verdict in every run. The caller's state is left as it was: as
    ``caller`` holds it, if the caller took that snapshot just now to restore it later itself.

    The CUDA generators are seeded only once CUDA is in use: seeding them earlier would
    initialise CUDA, or leave a seed queued for when it is.
    """
    caller = GlobalState.take() if caller is None else caller
    torch.default_generator.manual_seed(ITEM_SEED)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(ITEM_SEED)
    baseline = GlobalState.take()
    caller.restore_and_report()
    return baseline
