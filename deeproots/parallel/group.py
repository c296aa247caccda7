"""The ranks' process group (torch.distributed's gloo), in the numpy terms the model code speaks.

A gloo group of its own (not torch's default group), so one process may hold several (two models served) and every
collective carries its own timeout: a follower waits for rank 0's next step for as long as the server is idle
(`idle`), while a collective inside a step fails after STEP_TIMEOUT_S, which bounds how long a lost rank can stall a
request. Gloo's sockets are bound to this host's address on the route to rank 0 (the rendezvous address itself on
rank 0), never to every interface. Messages are plain int64/float32 tensors (never pickled objects).
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from ..engine.request import EngineStoppedError
from .join import JOIN_TIMEOUT_S, admit, knock, listening_socket

IDLE_TIMEOUT_S = 7 * 24 * 3600  # a follower waits this long for the next step (a server may be idle for days)
STEP_TIMEOUT_S = 30.0  # a collective inside a step fails after this (torch's default is 30 minutes)
HEARTBEAT_S = 1.0  # a follower writes its heartbeat to the store this often; rank 0 reads them to name a lost rank


class ClusterLostError(EngineStoppedError):
    """A rank died or stopped answering: the group cannot compute any more (HTTP 503; /health says so)."""


@dataclass(frozen=True)
class Rendezvous:
    """Where and as what a process joins: rank 0's address, the door where ranks prove the secret (join.py) and,
    at port + 1, the group's store. From torchrun's environment (its own agent holds MASTER_PORT: ours are the two
    after it) or from what launch.py sets for the ranks it spawns."""
    rank: int
    world_size: int
    address: str
    port: int

    @classmethod
    def from_environment(cls) -> "Rendezvous":
        port = int(os.environ.get("DEEPROOTS_TP_PORT") or int(os.environ["MASTER_PORT"]) + 1)
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"], port)


def local_address(master: str, port: int) -> str:
    """This host's address on the route to rank 0 (a UDP connect sends nothing; it only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((master, port))
        return probe.getsockname()[0]


log = logging.getLogger("deeproots.parallel")
T = TypeVar("T")


class ProcessGroup:
    def __init__(self, rendezvous: Rendezvous, secret: bytes, step_timeout_s: float = STEP_TIMEOUT_S):
        import torch
        import torch.distributed as dist

        self.torch = torch
        self.rank, self.world_size = rendezvous.rank, rendezvous.world_size
        self.idle = datetime.timedelta(seconds=IDLE_TIMEOUT_S)
        self.step = datetime.timedelta(seconds=step_timeout_s)
        address, port, wait = rendezvous.address, rendezvous.port, datetime.timedelta(seconds=JOIN_TIMEOUT_S)
        if self.rank == 0:
            door, store_socket = listening_socket(address, port), listening_socket(address, port + 1)
            # the store listens on the socket bound here (torch's own would bind every interface)
            self.store = dist.TCPStore(address, port + 1, self.world_size, is_master=True, timeout=wait,
                                       wait_for_workers=False, master_listen_fd=store_socket.detach())
            with door:
                admit(door, secret, self.world_size)
        else:
            knock(address, port, secret, self.rank)
            self.store = dist.TCPStore(address, port + 1, self.world_size, is_master=False, timeout=wait)
        address = rendezvous.address if rendezvous.rank == 0 else local_address(rendezvous.address, rendezvous.port)
        self.options = options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
        options._timeout = self.step
        self.gloo = dist.ProcessGroupGloo(dist.PrefixStore("deeproots", self.store), self.rank, self.world_size,
                                          options)
        self.to_rank_zero = dist.GatherOptions()
        self.to_rank_zero.rootRank, self.to_rank_zero.timeout = 0, self.step
        self.lost: str | None = None  # why the group can no longer compute, once it cannot
        self.rendezvous = rendezvous
        if self.rank != 0:
            threading.Thread(target=self._beat, name="deeproots-heartbeat", daemon=True).start()

    def subgroup(self, members: range) -> "ProcessGroup":
        """The group of the ranks `members` (this one among them), as this one sees it: its own gloo group (every
        member makes it at once), ranks counted from 0 within it; its heartbeats and store are this group's."""
        import torch.distributed as dist

        sub = copy.copy(self)
        sub.rank, sub.world_size = members.index(self.rank), len(members)
        store = dist.PrefixStore(f"deeproots/{members.start}-{members.stop}", self.store)
        sub.gloo = dist.ProcessGroupGloo(store, sub.rank, sub.world_size, self.options)
        return sub

    def _beat(self) -> None:
        """A follower's heartbeat in the store, on a connection of its own (the main thread's may be in a call)."""
        import torch.distributed as dist

        store = dist.TCPStore(self.rendezvous.address, self.rendezvous.port + 1, self.world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
        while True:
            store.set(f"heartbeat/{self.rank}", repr(time.time()))
            time.sleep(HEARTBEAT_S)

    def silent_ranks(self) -> list[int]:
        """The followers whose heartbeat is older than three beats (after waiting that long for them)."""
        time.sleep(3 * HEARTBEAT_S)
        now, silent = time.time(), []
        for rank in range(1, self.world_size):
            key = f"heartbeat/{rank}"
            try:
                beat = float(self.store.get(key)) if self.store.check([key]) else 0.0
            except Exception:  # noqa: BLE001 -- a store that cannot answer says nothing about the rank
                beat = 0.0
            if now - beat > 3 * HEARTBEAT_S:
                silent.append(rank)
        return silent

    def _wait(self, work, timeout: datetime.timedelta) -> None:
        """Wait for a collective, guarded as every gloo call is."""
        self._guarded(lambda: work.wait(timeout))

    def _guarded(self, call: Callable[[], T]) -> T:
        """call(), a gloo call (starting or waiting for one); its failure (a rank gone: its sockets closed, or the
        timeout) loses the group."""
        if self.lost is not None:
            raise ClusterLostError(self.lost)
        try:
            return call()
        except Exception as error:  # noqa: BLE001 -- gloo raises RuntimeError subclasses of its own
            if self.rank == 0:
                silent = self.silent_ranks()
                who = f"rank {', '.join(map(str, silent))}" if silent else "a rank"
                self.lost = f"tensor-parallel group lost: {who} of {self.world_size} stopped answering ({error})"
                log.error("%s", self.lost)
            else:
                self.lost = f"tensor-parallel group lost ({error})"
            raise ClusterLostError(self.lost) from None

    def all_reduce_(self, x: np.ndarray) -> np.ndarray:
        """Sum x (any shape, float32, C-contiguous) over the ranks, in place; every rank gets the same bits."""
        self._wait(self.gloo.allreduce([self.torch.from_numpy(x)]), self.step)
        return x

    def gather_columns(self, x: np.ndarray, widths: list[int], *, everywhere: bool = False) -> np.ndarray | None:
        """Rank r's x (R, widths[r]) side by side: (R, sum(widths)) on rank 0 (every rank with `everywhere`), None
        on the others."""
        padded = np.zeros((x.shape[0], max(widths)), np.float32)  # a collective needs one shape on every rank
        padded[:, :x.shape[1]] = x
        tensor = self.torch.from_numpy(padded)
        parts = [self.torch.empty_like(tensor) for _ in range(self.world_size)]
        if everywhere:
            self._wait(self.gloo.allgather([parts], [tensor]), self.step)
        elif self.rank == 0:
            self._wait(self.gloo.gather([parts], [tensor], self.to_rank_zero), self.step)
        else:
            self._wait(self.gloo.gather([], [tensor], self.to_rank_zero), self.step)
            return None
        return np.concatenate([part.numpy()[:, :width] for part, width in zip(parts, widths)], axis=1)

    def send(self, x: np.ndarray, rank: int) -> Callable[[], None]:
        """Start sending x (float32) to `rank`, which receives it with `receive` and the same shape (pipeline
        stages); the returned call waits until it is sent. Messages between two ranks arrive in the order sent."""
        tensor = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        work = self._guarded(lambda: self.gloo.send([tensor], rank, 0))
        return lambda: self._wait(work, self.step)  # the work holds `tensor` until then

    def receive(self, shape: tuple[int, ...], rank: int) -> Callable[[], np.ndarray]:
        """Start receiving an array of `shape` from `rank`; the returned call waits for it and gives it."""
        data = np.empty(shape, np.float32)
        work = self._guarded(lambda: self.gloo.recv([self.torch.from_numpy(data)], rank, 0))

        def received() -> np.ndarray:
            self._wait(work, self.step)
            return data
        return received

    def broadcast(self, values: np.ndarray | None, dtype, *, idle: bool = False) -> np.ndarray:
        """A 1-d array from rank 0 to every rank (pass None elsewhere): its length first, then its values; `idle`:
        on the commands group, where a follower may wait for a long time."""
        if self.rank == 0:
            self.post(values, dtype, idle=idle)()
            return values
        wait = self.idle if idle else self.step
        length = self.torch.tensor([0], dtype=self.torch.int64)
        self._wait(self._guarded(lambda: self.gloo.broadcast(length, 0, wait)), wait)
        data = self.torch.from_numpy(np.empty(int(length[0]), dtype))
        self._wait(self._guarded(lambda: self.gloo.broadcast(data, 0, self.step)), self.step)
        return data.numpy()

    def post(self, values: np.ndarray, dtype, *, idle: bool = False) -> Callable[[], None]:
        """Rank 0: start broadcasting `values` (the others `broadcast` in the same order); the returned call waits
        until every rank has them (a rank busy with an earlier step takes them when it is done)."""
        wait = self.idle if idle else self.step
        length = self.torch.tensor([len(values)], dtype=self.torch.int64)
        data = self.torch.from_numpy(np.ascontiguousarray(values, dtype=dtype))
        sizes = self._guarded(lambda: self.gloo.broadcast(length, 0, wait))
        contents = self._guarded(lambda: self.gloo.broadcast(data, 0, self.step))

        def sent() -> None:  # its works hold the tensors until then
            self._wait(sizes, wait)
            self._wait(contents, self.step)
        return sent

    def close(self) -> None:
        self.gloo, self.store = None, None  # gloo's sockets close with the group
