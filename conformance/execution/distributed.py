"""Running a candidate in ``W`` processes of one ``torch.distributed`` group, supervised.

:func:`run_in_process_group` starts one process per shard, makes them a process group
(gloo, rendezvous through a file store in a fresh folder), and calls the
candidate on every rank with its shard (:func:`~kfac_conformance.execution.calling.call_candidate`:
the capability gate, the watch and the validation of any other call). Every rank sends back
its answers; the first rank that crashes, raises or is still running at the deadline ends
the run with :class:`ProcessGroupFailed`.

No process outlives the run: the ranks form one OS process group, killed as a whole
(grandchildren a candidate started included) when the run ends for any reason, and each
rank kills that group itself if the process that started it dies (a supervised worker
killed for its item's timeout), so a hang never leaves orphans.

With ``launcher="torchrun"`` this process stands for one rank of a ``torchrun`` launch
(:mod:`kfac_conformance.execution.torchrun`): it forks that rank alone, the ranks meet in the
agent's store, and the processes swap their ranks' outcomes there.

The ranks are forked (cheap, and any candidate object is inherited), so they run CPU
problems with gloo; CUDA cannot be used in a forked child, and CUDA problems are skipped with
a reason pointing at the NCCL design in docs/distributed.md.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Protocol

import torch
from torch import Tensor

from kfac_conformance.contract.outcomes import CandidateRefused, CheckFailed, CheckSkipped
from kfac_conformance.contract.problem import Candidate, Problem, Request
from kfac_conformance.execution import torchrun
from kfac_conformance.execution.calling import CandidateError, call_candidate, traceback_tail
from kfac_conformance.execution.torchrun import AgentStoreRendezvous

# how long the ranks of one run may take together (a collective may take twice as long, so
# that the run's deadline, which sees every rank, reports a hang first)
PROCESS_GROUP_TIMEOUT_S = 60.0
_PARENT_POLL_S = 0.5


def current_process_group():
    """The default ``torch.distributed`` group when this process is in one, else ``None``:
    how a distributed candidate tells that its problem is a shard."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


class ProcessGroupFailed(CandidateError):
    """A rank crashed, raised or hung: the item errors with which rank and how."""

    def __init__(self, message: str) -> None:
        super().__init__(RuntimeError(message))
        self.message = message

    def describe(self) -> str:
        return self.message


@dataclass
class RankAnswer:
    """What one rank returns: a validated result per request (in order), the labels its MC
    draws for each request when asked, and the side effects and hygiene notes of its calls."""

    results: list[dict] = field(default_factory=list)
    labels: list[list[Tensor]] = field(default_factory=list)
    side_effects: list[str] = field(default_factory=list)
    hygiene: list[str] = field(default_factory=list)


def run_in_process_group(
    candidate: Candidate,
    shards: Sequence[Problem],
    requests: Sequence[Request],
    *,
    with_labels: bool = False,
    timeout_s: float | None = None,
    launcher: str = "fork",
) -> list[RankAnswer]:
    """Every rank's answers to ``requests``, rank ``r`` holding ``shards[r]``.

    ``launcher="fork"`` forks every rank here; ``"torchrun"`` forks only the rank of this
    ``torchrun`` process, whose world size must be ``len(shards)``, and gathers the other
    ranks' answers from their processes.

    Raises what a call on any rank raised (:class:`CheckSkipped`, :class:`CheckFailed`),
    and :class:`ProcessGroupFailed` for a rank that crashed, raised, or had not answered
    within ``timeout_s`` (default :data:`PROCESS_GROUP_TIMEOUT_S`).
    """
    if shards[0].device.type != "cpu":
        raise CheckSkipped(
            f"not supported on this run: the distributed checks fork their ranks, which run "
            f"CPU problems only (CUDA cannot be used in a forked child), not "
            f"{shards[0].device.type}; on GPUs see the NCCL design in docs/distributed.md"
        )
    timeout_s = PROCESS_GROUP_TIMEOUT_S if timeout_s is None else timeout_s
    launch = functools.partial(_launch, candidate, list(requests), with_labels, timeout_s)
    if launcher == "fork":
        with tempfile.TemporaryDirectory(prefix="kfac-conformance-pg-") as folder:
            rendezvous = FileRendezvous(os.path.join(folder, "store"))
            return _answers_of(launch(dict(enumerate(shards)), rendezvous, len(shards)))
    if launcher != "torchrun":
        raise ValueError(f"launcher must be 'fork' or 'torchrun', got {launcher!r}")

    def one_rank(rank: int, rendezvous: AgentStoreRendezvous, world: int) -> tuple:
        try:
            return launch({rank: shards[rank]}, rendezvous, world)[rank]
        except ProcessGroupFailed as lost:
            return "lost", lost.message

    # what names the group alike in every process: they all run the same plan
    identity = (shards[0].case_id, [len(piece.batches[0][0]) for piece in shards], list(requests))
    return _answers_of(
        torchrun.outcomes(repr((identity, with_labels)), len(shards), one_rank, timeout_s)
    )


def _launch(candidate, requests, with_labels, timeout_s, shards, rendezvous, world) -> dict:
    launch = _Launch(candidate, shards, requests, with_labels, timeout_s, rendezvous, world)
    try:
        launch.start()
        return launch.collect()
    finally:
        launch.kill()


class Rendezvous(Protocol):
    """Where the ranks of one group meet: the store they initialise it on."""

    def open(self, world: int, timeout: timedelta): ...


@dataclass(frozen=True)
class FileRendezvous:
    """Where forked ranks meet: a file store in a fresh folder (no port needed)."""

    path: str

    def open(self, world: int, timeout: timedelta):
        import torch.distributed as dist

        return dist.FileStore(self.path, world)


@dataclass
class _Launch:
    """Forks the ranks of ``shards`` (by global rank) of a group of ``world`` ranks."""

    candidate: Candidate
    shards: dict[int, Problem]
    requests: list[Request]
    with_labels: bool
    timeout_s: float
    rendezvous: Rendezvous
    world: int
    pids: dict[int, int] = field(default_factory=dict)
    readers: dict[int, Connection] = field(default_factory=dict)
    exit_codes: dict[int, int] = field(default_factory=dict)
    group_id: int | None = None

    def start(self) -> None:
        # os.fork, not multiprocessing: a supervised worker is a daemonic process, which
        # multiprocessing forbids to have children
        for rank, shard in self.shards.items():
            reader, writer = multiprocessing.Pipe(duplex=False)
            arguments = _RankArguments(
                rank, self.world, self.rendezvous, self.group_id or 0, os.getpid(), self.timeout_s
            )
            pid = os.fork()
            if pid == 0:  # the rank: never returns into the caller's code
                code = 1
                try:
                    reader.close()
                    _rank_main(
                        arguments, self.candidate, shard, self.requests, self.with_labels, writer
                    )
                    code = 0
                finally:
                    _exit_rank(arguments.parent, code)
            writer.close()
            if self.group_id is None:
                self.group_id = pid
            _join_group(pid, self.group_id)
            self.pids[rank] = pid
            self.readers[rank] = reader

    def collect(self) -> dict[int, tuple]:
        deadline = time.monotonic() + self.timeout_s
        outcomes: dict[int, tuple] = {}
        while len(outcomes) < len(self.pids):
            waiting = [rank for rank in self.pids if rank not in outcomes]
            if time.monotonic() >= deadline:
                raise ProcessGroupFailed(
                    f"ranks {waiting} of {self.world} had not answered after {self.timeout_s:g} s "
                    "(a hang, e.g. in a collective that not every rank entered); every rank "
                    "was killed"
                )
            # a rank that dies shows as its pipe closing, or (held open by a grandchild)
            # only in waitpid: poll both
            wait([self.readers[rank] for rank in waiting], timeout=_PARENT_POLL_S)
            for rank in waiting:
                if self.readers[rank].poll():
                    outcomes[rank] = self._receive(rank)
                elif self._exited(rank):
                    raise self._crashed(rank)
        return outcomes

    def _receive(self, rank: int) -> tuple:
        try:
            return torch.load(io.BytesIO(self.readers[rank].recv_bytes()), weights_only=False)
        except EOFError:
            self._exited(rank, block=True)
            raise self._crashed(rank) from None

    def _exited(self, rank: int, block: bool = False) -> bool:
        if rank not in self.exit_codes:
            pid, status = os.waitpid(self.pids[rank], 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.exit_codes[rank] = os.waitstatus_to_exitcode(status)
        return True

    def _crashed(self, rank: int) -> ProcessGroupFailed:
        code = self.exit_codes[rank]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return ProcessGroupFailed(
            f"rank {rank} of {self.world} {how} before answering (a crash); every rank was killed"
        )

    def kill(self) -> None:
        """Kill every process of the ranks' group (and any rank outside it), then reap them."""
        if self.group_id is not None:
            try:
                os.killpg(self.group_id, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for rank, pid in self.pids.items():
            if rank not in self.exit_codes:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._exited(rank, block=True)
        for reader in self.readers.values():
            reader.close()


@dataclass(frozen=True)
class _RankArguments:
    rank: int
    world: int
    rendezvous: Rendezvous
    group_id: int  # 0: this rank leads a new OS process group
    parent: int
    timeout_s: float


def _join_group(pid: int, group_id: int) -> None:
    # set from both sides (as shells do), so that the group holds before either goes on
    try:
        os.setpgid(pid, group_id)
    except (ProcessLookupError, PermissionError):
        pass  # it exited already, or set it itself


def _answers_of(outcomes: dict[int, tuple]) -> list[RankAnswer]:
    """The ranks' answers in rank order; else what the first rank that did not answer gives,
    a lost rank (crashed or hung) first: it explains the errors of the ranks that waited for it
    in a collective."""
    lost = [payload for kind, payload in outcomes.values() if kind == "lost"]
    if lost:
        raise ProcessGroupFailed("; ".join(lost))
    return [_answer(rank, outcomes[rank]) for rank in sorted(outcomes)]


def _answer(rank: int, outcome: tuple) -> RankAnswer:
    kind, payload = outcome
    if kind == "answer":
        return payload
    where = f"rank {rank}: "
    if kind == "skipped":
        raise CheckSkipped(payload)
    if kind == "failed":
        raise CheckFailed(where + payload)
    if kind == "error":
        raise ProcessGroupFailed(where + payload)
    raise RuntimeError(f"{where}the suite's rank code raised: {payload}")


def _rank_main(
    arguments: _RankArguments,
    candidate: Candidate,
    shard: Problem,
    requests: list[Request],
    with_labels: bool,
    writer: Connection,
) -> None:
    _join_group(0, arguments.group_id)
    _kill_group_when_orphaned(arguments.parent)
    torch.set_num_threads(1)  # W ranks share the machine's cores
    outcome = _rank_outcome(arguments, candidate, shard, requests, with_labels)
    buffer = io.BytesIO()
    torch.save(outcome, buffer)
    writer.send_bytes(buffer.getvalue())
    writer.close()


def _rank_outcome(arguments, candidate, shard, requests, with_labels) -> tuple:
    import torch.distributed as dist

    try:
        # longer than the run's deadline, so that a hang is reported as one, by the parent
        timeout = timedelta(seconds=2 * arguments.timeout_s)
        dist.init_process_group(
            "gloo",  # CPU shards only: run_in_process_group skips CUDA problems
            store=arguments.rendezvous.open(arguments.world, timeout),
            rank=arguments.rank,
            world_size=arguments.world,
            timeout=timeout,
        )
        try:
            return "answer", _answers(candidate, shard, requests, with_labels)
        finally:
            dist.destroy_process_group()
    except (CheckSkipped, CandidateRefused) as skipped:
        return "skipped", str(skipped)
    except CheckFailed as failed:
        return "failed", failed.message
    except CandidateError as error:
        return "error", error.describe()
    except Exception as error:  # the suite's own code: reported as its defect
        return "internal", traceback_tail(error, error.__traceback__)


def _answers(candidate, shard: Problem, requests, with_labels: bool) -> RankAnswer:
    answer = RankAnswer()
    for request in requests:
        result, side_effects, hygiene = call_candidate(candidate, shard, request)
        answer.results.append(result)
        answer.side_effects += side_effects
        answer.hygiene += hygiene
        if with_labels:
            try:
                labels = candidate.sampled_labels(shard, request)
            except Exception as exception:
                raise CandidateError(exception) from exception
            answer.labels.append([drawn.detach().cpu() for drawn in labels])
    return answer


def _kill_group_when_orphaned(parent: int) -> None:
    """Kill this rank's whole OS process group once the process that started it is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="kfac-conformance-orphan-watch", daemon=True).start()


def _exit_rank(parent: int, code: int) -> None:
    """End this rank; one whose parent is gone first kills its group, as its watch would:
    a rank that ends between two polls of the watch (its collective broken by a peer's death)
    would otherwise leave what the candidate started."""
    if os.getppid() != parent:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(code)
