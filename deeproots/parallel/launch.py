"""Starting the ranks: on one host, rank 0 spawns the others (`--tp N`); under torchrun each host starts its own and
the environment says which rank it is (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field

from ..errors import RequestError
from .group import ProcessGroup, Rendezvous
from .join import read_secret

LOOPBACK = "127.0.0.1"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def follower_under_torchrun() -> bool:
    """This process is a torchrun rank other than 0: it follows rank 0's steps instead of running the command."""
    return under_torchrun() and os.environ["RANK"] != "0"


def load_options(path, *, context=None, reference=False, threads=None, kv_type=None, tp=1, tp_reduction="exact",
                 pp=1, pp_split=None) -> list[str]:
    """The command line of `python -m deeproots.parallel` that loads the same model the same way."""
    argv = ["--model", str(path), "--tp", str(tp), "--tp-reduction", tp_reduction, "--pp", str(pp)]
    if pp_split:
        argv += ["--pp-split", ",".join(map(str, pp_split))]
    for flag, value in (("--ctx", context), ("--threads", threads), ("--kv-type", kv_type)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--reference"] if reference else [])


def _free_ports(address: str) -> int:
    """A port p such that p and p + 1 are free at address (the door and the store, group.Rendezvous)."""
    while True:
        with socket.socket() as first, socket.socket() as second:
            first.bind((address, 0))
            port = first.getsockname()[1]
            try:
                second.bind((address, port + 1))
            except OSError:
                continue
            return port


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


def start_cluster(ranks: int, path, secret_file=None, **options) -> Cluster:
    """Join (torchrun, proving the secret in `secret_file`) or make (spawning ranks - 1 followers on loopback, with a
    secret of its own) a group of `ranks` (--tp or --pp), as rank 0."""
    tp = ranks
    if tp < 2:
        raise RequestError(f"a parallel group needs at least 2 ranks, got {tp}")
    if under_torchrun():
        rendezvous = Rendezvous.from_environment()
        if rendezvous.world_size != tp or rendezvous.rank != 0:
            raise RequestError(f"{tp} ranks asked on rank {rendezvous.rank} of {rendezvous.world_size}: torchrun's "
                               "--nnodes x --nproc-per-node must equal --tp (or --pp), and only rank 0 leads")
        if secret_file is None:
            raise RequestError("under torchrun every rank needs --secret-file (the same secret on every host)")
        return Cluster(ProcessGroup(rendezvous, read_secret(secret_file)))
    rendezvous = Rendezvous(0, tp, LOOPBACK, _free_ports(LOOPBACK))
    secret = secrets.token_hex(32).encode()
    env = {**os.environ, "WORLD_SIZE": str(tp), "MASTER_ADDR": LOOPBACK, "DEEPROOTS_TP_PORT": str(rendezvous.port)}
    workers = []
    for rank in range(1, tp):
        worker = subprocess.Popen([sys.executable, "-m", "deeproots.parallel", "--secret-stdin",
                                   *load_options(path, **options)], env={**env, "RANK": str(rank)},
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        worker.stdin.write(secret)  # a pipe: not in any other user's view of the process, as argv or env would be
        worker.stdin.close()
        workers.append(worker)
    return Cluster(ProcessGroup(rendezvous, secret), workers)


def parallel_groups(world: ProcessGroup, tp: int, pp: int) -> tuple[ProcessGroup | None, ProcessGroup | None]:
    """(the ranks splitting this rank's layers, every rank of the pipeline) for load_model_file's tensor_parallel
    and pipeline_parallel: with both, a stage's tp ranks are consecutive (stage = rank // tp)."""
    if pp == 1:
        return world, None
    if tp == 1:
        return None, world
    stage = world.rank // tp
    return world.subgroup(range(stage * tp, (stage + 1) * tp)), world


def follow_main(path, secret: bytes, **options) -> None:
    """A follower rank: join the group the environment names, load this rank's share, run rank 0's steps."""
    from ..loader import load_model_file
    from .leader import follow

    group = ProcessGroup(Rendezvous.from_environment(), secret)
    backend = "reference" if options.pop("reference", False) else "cpu"
    tensor, pipeline = parallel_groups(group, options.pop("tp", 1), options.pop("pp", 1))
    loaded = load_model_file(path, backend=backend, tensor_parallel=tensor, pipeline_parallel=pipeline, **options)
    try:
        follow(loaded, group)
    finally:
        group.close()
