"""Hostile distributed candidates: kfac_ref's data-parallel KFAC on every rank but one, which
crashes or hangs while the others wait in a collective.

Each rank first starts a ``sleep`` grandchild and records its own pid and the grandchild's in
``PID_FOLDER`` under the working directory, so that a test can show none of them survives.
Loadable by the CLI (``--candidate tests/hostile_distributed.py:HangingRank``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import torch.distributed as dist

from kfac_conformance.contract.problem import Capabilities, Problem, Request
from kfac_conformance.execution.distributed import current_process_group
from kfac_conformance.execution.session import reference_compute
from kfac_ref.factors import KroneckerFactors

PID_FOLDER = "distributed-pids"
EXIT_CODE = 3
HANG_SECONDS = 120  # bounded, so that a leak would end on its own


class HostileRank:
    """The reference on rank 0; ``misbehave`` on the others."""

    name = "hostile-distributed"
    capabilities = Capabilities(distributed=True)

    def compute(self, problem: Problem, request: Request) -> Mapping[str, KroneckerFactors]:
        _record_with_a_grandchild()
        group = current_process_group()
        if group is not None and dist.get_rank(group) != 0:
            self.misbehave()
        # rank 0 waits in the reference's first all-reduce for the misbehaving rank
        return reference_compute(problem, request, group)

    def misbehave(self) -> None:
        raise NotImplementedError


class CrashingRank(HostileRank):
    """Rank 1 ends its process abruptly, as a segfault or an OOM kill would."""

    def misbehave(self) -> None:
        os._exit(EXIT_CODE)


class HangingRank(HostileRank):
    """Rank 1 never reaches the collective that rank 0 waits in."""

    def misbehave(self) -> None:
        time.sleep(HANG_SECONDS)


def recorded_pids(folder: Path) -> list[int]:
    return [int(path.name) for path in (folder / PID_FOLDER).iterdir()]


def _record_with_a_grandchild() -> None:
    folder = Path(PID_FOLDER)
    folder.mkdir(exist_ok=True)
    grandchild = subprocess.Popen(["sleep", str(HANG_SECONDS)])
    for pid in (os.getpid(), grandchild.pid):
        (folder / str(pid)).touch()
