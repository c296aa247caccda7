"""Pipeline parallelism: the layers cut into contiguous stages, one per rank, hidden states passed stage to stage.

Rank 0 is stage 0 and also holds the embeddings, the final norm and the output projection: it embeds the step's
tokens, runs its layers and sends the hidden states (N, d_model) to rank 1; each stage runs its layers and sends
them on; the last sends them back to rank 0, which finishes the step. A stage's KV cache holds its own layers.

Stages overlap under load: the engine keeps `steps_in_flight` = one step per stage in flight, each over its own
share of the running sequences (engine.py), and rank 0 sends a step on without waiting for it to come back, so
while stage 1 runs one step stage 0 runs the next. A single sequence has one step at a time: batch-1 decode gains
capacity (each host holds its layers only), not speed. DEEPROOTS_PP_OVERLAP=0 keeps one step in flight (stages in
turn), to compare or to debug.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..backends.base import Backend
from ..cache.kv import KVCache, KVLayout
from ..errors import RequestError
from .group import ProcessGroup
from .plan import balanced
from .wrapping import WrappingBackend


def split_layers(n_layers: int, stages: int, split: list[int] | None = None,
                 memory: list[float] | None = None) -> list[range]:
    """The stages' layers: cut at `split` (the first layer of every stage after the first, as `--pp-split 10,22`),
    else in proportion to each stage's `memory` (its host's available memory), else as evenly as layers allow."""
    if split is None:
        if stages > n_layers:
            raise RequestError(f"cannot cut {n_layers} layers into {stages} pipeline stages")
        if memory is None or len(set(memory)) == 1:
            return balanced(n_layers, stages)
        # every stage at least one layer; the rest by largest share of the memory (ties to the earlier stage)
        shares = [n_layers * m / sum(memory) for m in memory]
        counts = [max(1, int(share)) for share in shares]
        while sum(counts) != n_layers:
            if sum(counts) < n_layers:
                counts[max(range(stages), key=lambda i: (shares[i] - counts[i], -i))] += 1
            else:
                counts[max((i for i in range(stages) if counts[i] > 1), key=lambda i: (counts[i] - shares[i], -i))] -= 1
        split = [sum(counts[:i]) for i in range(1, stages)]
    bounds = [0, *split, n_layers]
    if len(split) != stages - 1 or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise RequestError(f"--pp-split needs {stages - 1} increasing layer indices between 1 and {n_layers - 1}, "
                           f"got {','.join(map(str, split))}")
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class PipelineBackend(WrappingBackend):
    """Stage rank // tp of the world's ranks; with tensor parallelism (tp > 1) each stage is tp ranks, and rank r
    passes hidden states to rank r + tp of the next stage (each holds the whole states after its stage's gathers)."""

    def __init__(self, inner: Backend, stages: list[range], group: ProcessGroup, d_model: int, tp: int = 1):
        super().__init__(inner, group, "pipeline stage")
        self.stages, self.d_model, self.tp = stages, d_model, tp
        self.stage = group.rank // tp
        self.last = len(stages) - 1
        self.steps_in_flight = len(stages) if os.environ.get("DEEPROOTS_PP_OVERLAP", "1") != "0" else 1
        if getattr(inner, "leader", None) is not None:
            # tensor-parallel stages: one leader numbers every message (and mirrors the prefix cache)
            self.leader = self.prefix_mirror = inner.leader
        self.step_number = 0  # rank 0: the message number of the step at hand

    def kv_cache(self, layout: KVLayout, max_tokens: int, kv_type: str | None = None) -> KVCache:
        """This stage's layers only."""
        local = layout._replace(n_layers=len(self.stages[self.stage]))
        return self.inner.kv_cache(local, max_tokens, kv_type or self.default_kv_type)

    def begin_step(self, tokens: np.ndarray, caches, lengths) -> None:
        """Rank 0 does not wait for the other ranks to take the step (a later stage may be on an earlier one): they
        all have it once its states are back."""
        if self.leader is not None:
            self.step_number = self.leader.send_step(tokens, caches, lengths)

    def stage_input(self, embed: Callable[[], np.ndarray], n_tokens: int) -> np.ndarray:
        if self.stage == 0:
            return embed()
        return self.group.receive((n_tokens, self.d_model), self.group.rank - self.tp)()

    def stage_output(self, x: np.ndarray) -> Callable[[], np.ndarray | None]:
        """x on to the next stage; the last stage's first rank sends it back to rank 0, which finishes the step
        (every rank of a stage holds the same states) and gets a call that waits for them."""
        rank = self.group.rank
        if self.stage < self.last:
            sent = self.group.send(x, rank + self.tp)
        else:
            sent = self.group.send(x, 0) if rank == self.last * self.tp else lambda: None
        if rank != 0:
            return sent  # a follower waits for its send and gives None
        back = self.group.receive(x.shape, self.last * self.tp)  # posted now: it may arrive while rank 0 works on
        number = self.step_number

        def returned() -> np.ndarray:
            sent()
            x = back()
            self.leader.settle(number)
            return x
        return returned


def available_memory_mb() -> float:
    """This host's available memory (MemAvailable), in MB."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1000
    return 0.0


def place_stage(config, inner: Backend, group: ProcessGroup, split: list[int] | None = None, tp: int = 1):
    """(backend, the architecture's keywords) for this rank's stage (`group`: every rank, tp per stage); without
    `split`, every rank's available memory is gathered and the layers cut in proportion to each stage's."""
    n_stages = group.world_size // tp
    memory = None
    if split is None:
        mine = np.array([[available_memory_mb()]], np.float32)
        per_rank = group.gather_columns(mine, [1] * group.world_size, everywhere=True)[0].tolist()
        memory = [sum(per_rank[s * tp:(s + 1) * tp]) for s in range(n_stages)]
    stages = split_layers(config.n_layers, n_stages, split, memory)
    backend = PipelineBackend(inner, stages, group, config.d_model, tp)
    return backend, {"layers": stages[backend.stage], "ends": backend.stage == 0}
