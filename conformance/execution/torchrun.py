"""The ``torchrun`` launcher of the distributed checks: ``W`` processes that ``torchrun`` started
(on one node or several) each run the whole plan and stand for one rank.

``kfac-conformance run --launcher torchrun`` under ``torchrun`` gives every process the same
plan. For each process group an item needs, process ``RANK`` forks the one rank it stands
for, exactly as the forked launcher forks all of them
(:func:`~kfac_conformance.execution.distributed.run_in_process_group`), so the candidate never
runs in a process that writes the report, and a rank that crashes or hangs is seen by its own
process. The ranks meet in ``torchrun``'s agent store (:class:`AgentStoreRendezvous`); the
processes then swap their ranks' outcomes through the same store (:func:`exchange`), with a
deadline, so that each of them holds every rank's answer and reaches the same verdict, and
rank 0 writes the report. Nothing here uses a collective: a broken or hung group cannot stop
the exchange.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch

# what torchrun sets for every process it starts; the agent store is where its processes meet
_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")
_STORE_PREFIX = "kfac-conformance"


class NotUnderTorchrun(ValueError):
    """``--launcher torchrun`` in a process that ``torchrun`` did not start."""


@dataclass(frozen=True)
class TorchrunProcess:
    """This process's place in the ``torchrun`` launch: its rank, the number of ranks, and
    the address of the agent's store."""

    rank: int
    world: int
    host: str
    port: int

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> TorchrunProcess:
        missing = [name for name in _VARIABLES if not environ.get(name)]
        if missing or environ["TORCHELASTIC_USE_AGENT_STORE"] != "True":
            raise NotUnderTorchrun(
                "--launcher torchrun runs in the processes torchrun starts, e.g. `torchrun "
                "--standalone --nproc-per-node 2 -m kfac_conformance.frontends.cli run "
                "--launcher torchrun ...`; this process lacks "
                + (", ".join(missing) if missing else "TORCHELASTIC_USE_AGENT_STORE=True")
            )
        return cls(
            int(environ["RANK"]),
            int(environ["WORLD_SIZE"]),
            environ["MASTER_ADDR"],
            int(environ["MASTER_PORT"]),
        )

    def rendezvous(self, group: str) -> AgentStoreRendezvous:
        return AgentStoreRendezvous(self.host, self.port, f"{_STORE_PREFIX}/{group}/ranks")


@dataclass(frozen=True)
class AgentStoreRendezvous:
    """Where the ranks of one group meet: keys under ``prefix`` in the agent's store (a
    fresh prefix per group, so that a group never reads an earlier group's keys)."""

    host: str
    port: int
    prefix: str

    def open(self, world: int, timeout: timedelta):
        import torch.distributed as dist

        # a client of its own: a forked rank must not share its parent's connection
        client = dist.TCPStore(self.host, self.port, is_master=False, timeout=timeout)
        return dist.PrefixStore(self.prefix, client)


@functools.cache
def _store(host: str, port: int):
    import torch.distributed as dist

    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=60))


def exchange(
    launch: TorchrunProcess, group: str, outcome: tuple, timeout_s: float
) -> dict[int, tuple]:
    """Every rank's outcome of ``group``, this process's being ``outcome``; a rank whose
    process has not published its outcome within ``timeout_s`` is ``("lost", why)``."""
    store = _store(launch.host, launch.port)
    key = f"{_STORE_PREFIX}/{group}/outcome/"
    buffer = io.BytesIO()
    torch.save(outcome, buffer)
    store.set(key + str(launch.rank), buffer.getvalue())
    try:
        store.wait([key + str(rank) for rank in range(launch.world)], timedelta(seconds=timeout_s))
    except Exception:  # the store's timeout (DistStoreError); which keys are absent is below
        pass
    outcomes = {}
    for rank in range(launch.world):
        if store.check([key + str(rank)]):
            payload = io.BytesIO(store.get(key + str(rank)))
            outcomes[rank] = torch.load(payload, weights_only=False)
        else:
            outcomes[rank] = (
                "lost",
                f"the process of rank {rank} of {launch.world} had not reported after "
                f"{timeout_s:g} s (it is stuck outside the candidate, or gone)",
            )
    return outcomes


def outcomes(
    identity: str,
    world: int,
    run_rank: Callable[[int, AgentStoreRendezvous, int], tuple],
    timeout_s: float,
) -> dict[int, tuple]:
    """Every rank's outcome of the group that ``identity`` names alike in every process:
    ``run_rank(rank, rendezvous, world)`` gives this process's rank's, within ``timeout_s``;
    the other processes publish theirs (``world`` of them in all)."""
    process = TorchrunProcess.from_environment()
    if process.world != world:
        raise ValueError(f"a group of {world} ranks in a torchrun launch of {process.world}")
    group = hashlib.sha256(identity.encode()).hexdigest()[:16]
    outcome = run_rank(process.rank, process.rendezvous(group), process.world)
    # the other processes end their ranks by the same deadline; one still missing twice as
    # long after was slower to reach this group by more than a deadline, or is gone
    return exchange(process, group, outcome, 2 * timeout_s)
