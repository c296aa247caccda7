"""The ranks' process group (torch.distributed over gloo), in the numpy terms the model code speaks.

Two groups over the same ranks: `commands`, on which the other ranks wait for rank 0's next step for as long as the
server is idle, and `compute`, the collectives inside a step, whose timeout bounds how long a lost rank can stall a
request. Messages are plain int64/float32 tensors (never pickled objects).
"""

from __future__ import annotations

import datetime
import os
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


class ProcessGroup:
    def __init__(self, rendezvous: Rendezvous, step_timeout_s: float = STEP_TIMEOUT_S):
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.rank, self.world_size = rendezvous.rank, rendezvous.world_size
        idle = datetime.timedelta(seconds=IDLE_TIMEOUT_S)
        store = dist.TCPStore(rendezvous.address, rendezvous.port, rendezvous.world_size,
                              is_master=rendezvous.rank == 0, timeout=datetime.timedelta(seconds=60),
                              wait_for_workers=True)
        dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.world_size, timeout=idle)
        self.commands = dist.group.WORLD
        self.compute = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=step_timeout_s))

    def all_reduce_(self, x: np.ndarray) -> np.ndarray:
        """Sum x (any shape, float32, C-contiguous) over the ranks, in place; every rank gets the same bits."""
        self.dist.all_reduce(self.torch.from_numpy(x), group=self.compute)
        return x

    def gather_columns(self, x: np.ndarray, widths: list[int], *, everywhere: bool = False) -> np.ndarray | None:
        """Rank r's x (R, widths[r]) side by side: (R, sum(widths)) on rank 0 (every rank with `everywhere`), None
        on the others."""
        padded = np.zeros((x.shape[0], max(widths)), np.float32)  # a collective needs one shape on every rank
        padded[:, :x.shape[1]] = x
        tensor = self.torch.from_numpy(padded)
        parts = [self.torch.empty_like(tensor) for _ in range(self.world_size)]
        if everywhere:
            self.dist.all_gather(parts, tensor, group=self.compute)
        elif self.rank == 0:
            self.dist.gather(tensor, gather_list=parts, dst=0, group=self.compute)
        else:
            self.dist.gather(tensor, dst=0, group=self.compute)
            return None
        return np.concatenate([part.numpy()[:, :width] for part, width in zip(parts, widths)], axis=1)

    def broadcast(self, values: np.ndarray | None, dtype, *, idle: bool = False) -> np.ndarray:
        """A 1-d array from rank 0 to every rank (pass None elsewhere): its length first, then its values; `idle`:
        on the commands group, where a follower may wait for a long time."""
        group = self.commands if idle else self.compute
        length = self.torch.tensor([0 if values is None else len(values)], dtype=self.torch.int64)
        self.dist.broadcast(length, src=0, group=group)
        data = self.torch.from_numpy(np.ascontiguousarray(values, dtype=dtype)) if self.rank == 0 else \
            self.torch.empty(int(length[0]), dtype=self.torch.from_numpy(np.empty(0, dtype)).dtype)
        self.dist.broadcast(data, src=0, group=group)
        return data.numpy()

    def close(self) -> None:
        self.dist.destroy_process_group()
