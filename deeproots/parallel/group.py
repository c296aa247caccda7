"""The ranks' process group (torch.distributed's gloo), in the numpy terms the model code speaks.

A gloo group of its own (not torch's default group), so one process may hold several (two models served) and every
collective carries its own timeout: a follower waits for rank 0's next step for as long as the server is idle
(`idle`), while a collective inside a step fails after STEP_TIMEOUT_S, which bounds how long a lost rank can stall a
request. Gloo's sockets are bound to this host's address on the route to rank 0 (the rendezvous address itself on
rank 0), never to every interface. Messages are plain int64/float32 tensors (never pickled objects).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import numpy as np

IDLE_TIMEOUT_S = 7 * 24 * 3600  # a follower waits this long for the next step (a server may be idle for days)
STEP_TIMEOUT_S = 30.0  # a collective inside a step fails after this (torch's default is 30 minutes)


@dataclass(frozen=True)
class Rendezvous:
    """Where and as what a process joins: torchrun's environment variables, or what launch.py sets for its ranks."""
    rank: int
    world_size: int
    address: str
    port: int

    @classmethod
    def from_environment(cls) -> "Rendezvous":
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ["MASTER_ADDR"],
                   int(os.environ["MASTER_PORT"]))


def local_address(master: str, port: int) -> str:
    """This host's address on the route to rank 0 (a UDP connect sends nothing; it only picks the route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((master, port))
        return probe.getsockname()[0]


class ProcessGroup:
    def __init__(self, rendezvous: Rendezvous, step_timeout_s: float = STEP_TIMEOUT_S):
        import torch
        import torch.distributed as dist

        self.torch = torch
        self.rank, self.world_size = rendezvous.rank, rendezvous.world_size
        self.idle = datetime.timedelta(seconds=IDLE_TIMEOUT_S)
        self.step = datetime.timedelta(seconds=step_timeout_s)
        self.store = dist.TCPStore(rendezvous.address, rendezvous.port, rendezvous.world_size,
                                   is_master=rendezvous.rank == 0, timeout=datetime.timedelta(seconds=60),
                                   wait_for_workers=True)
        address = rendezvous.address if rendezvous.rank == 0 else local_address(rendezvous.address, rendezvous.port)
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
        options._timeout = self.step
        self.gloo = dist.ProcessGroupGloo(dist.PrefixStore("deeproots", self.store), self.rank, self.world_size,
                                          options)
        self.to_rank_zero = dist.GatherOptions()
        self.to_rank_zero.rootRank, self.to_rank_zero.timeout = 0, self.step

    def all_reduce_(self, x: np.ndarray) -> np.ndarray:
        """Sum x (any shape, float32, C-contiguous) over the ranks, in place; every rank gets the same bits."""
        self.gloo.allreduce([self.torch.from_numpy(x)]).wait(self.step)
        return x

    def gather_columns(self, x: np.ndarray, widths: list[int], *, everywhere: bool = False) -> np.ndarray | None:
        """Rank r's x (R, widths[r]) side by side: (R, sum(widths)) on rank 0 (every rank with `everywhere`), None
        on the others."""
        padded = np.zeros((x.shape[0], max(widths)), np.float32)  # a collective needs one shape on every rank
        padded[:, :x.shape[1]] = x
        tensor = self.torch.from_numpy(padded)
        parts = [self.torch.empty_like(tensor) for _ in range(self.world_size)]
        if everywhere:
            self.gloo.allgather([parts], [tensor]).wait(self.step)
        elif self.rank == 0:
            self.gloo.gather([parts], [tensor], self.to_rank_zero).wait(self.step)
        else:
            self.gloo.gather([], [tensor], self.to_rank_zero).wait(self.step)
            return None
        return np.concatenate([part.numpy()[:, :width] for part, width in zip(parts, widths)], axis=1)

    def broadcast(self, values: np.ndarray | None, dtype, *, idle: bool = False) -> np.ndarray:
        """A 1-d array from rank 0 to every rank (pass None elsewhere): its length first, then its values; `idle`:
        on the commands group, where a follower may wait for a long time."""
        length = self.torch.tensor([0 if values is None else len(values)], dtype=self.torch.int64)
        self.gloo.broadcast(length, 0, self.idle if idle else self.step).wait(self.idle if idle else self.step)
        data = self.torch.from_numpy(np.ascontiguousarray(values, dtype=dtype)) if self.rank == 0 else \
            self.torch.from_numpy(np.empty(int(length[0]), dtype))
        self.gloo.broadcast(data, 0, self.step).wait(self.step)
        return data.numpy()

    def close(self) -> None:
        self.gloo, self.store = None, None  # gloo's sockets close with the group
