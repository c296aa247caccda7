"""Starting the ranks: on one host, rank 0 spawns the others (`--tp N`); under torchrun each host starts its own and
the environment says which rank it is (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from ..errors import RequestError
from .group import ProcessGroup, Rendezvous

LOOPBACK = "127.0.0.1"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def follower_under_torchrun() -> bool:
    """This process is a torchrun rank other than 0: it follows rank 0's steps instead of running the command."""
    return under_torchrun() and os.environ["RANK"] != "0"


def load_options(path, *, context=None, reference=False, threads=None, kv_type=None,
                 tp_reduction="exact") -> list[str]:
    """The command line of `python -m deeproots.parallel` that loads the same model the same way."""
    argv = ["--model", str(path), "--tp-reduction", tp_reduction]
    for flag, value in (("--ctx", context), ("--threads", threads), ("--kv-type", kv_type)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--reference"] if reference else [])


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """This process's place in a tensor-parallel group (rank 0 here), with the ranks it spawned (none under
    torchrun)."""
    group: ProcessGroup
    workers: list[subprocess.Popen] = field(default_factory=list)

    def abort(self) -> None:
        """After a failed load: end the spawned ranks (they failed the same way, or wait for a step) and leave."""
        for worker in self.workers:
            worker.kill()
            worker.wait()
        self.group.close()

    def close(self, backend) -> None:
        """Tell the other ranks to stop (rank 0's `backend` sends it), wait for the spawned ones, leave the group."""
        try:
            backend.leader.stop()
        finally:
            for worker in self.workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            self.group.close()


def start_cluster(tp: int, path, **options) -> Cluster:
    """Join (torchrun) or make (spawning tp - 1 followers on loopback) a group of tp ranks, as rank 0."""
    if tp < 2:
        raise RequestError(f"tensor parallelism needs at least 2 ranks, got {tp}")
    if under_torchrun():
        rendezvous = Rendezvous.from_environment()
        if rendezvous.world_size != tp or rendezvous.rank != 0:
            raise RequestError(f"--tp {tp} on rank {rendezvous.rank} of {rendezvous.world_size}: torchrun's "
                               "--nnodes x --nproc-per-node must equal --tp, and only rank 0 loads as the leader")
        return Cluster(ProcessGroup(rendezvous))
    rendezvous = Rendezvous(0, tp, LOOPBACK, _free_port(LOOPBACK))
    env = {**os.environ, "WORLD_SIZE": str(tp), "MASTER_ADDR": LOOPBACK, "MASTER_PORT": str(rendezvous.port)}
    workers = [subprocess.Popen([sys.executable, "-m", "deeproots.parallel", *load_options(path, **options)],
                                env={**env, "RANK": str(rank)}, stdout=subprocess.DEVNULL)
               for rank in range(1, tp)]
    return Cluster(ProcessGroup(rendezvous), workers)


def follow_main(path, **options) -> None:
    """A follower rank: join the group the environment names, load this rank's share, run rank 0's steps."""
    from ..loader import load_model_file
    from .leader import follow

    group = ProcessGroup(Rendezvous.from_environment())
    backend = "reference" if options.pop("reference", False) else "cpu"
    loaded = load_model_file(path, backend=backend, tensor_parallel=group, **options)
    try:
        follow(loaded, group)
    finally:
        group.close()
