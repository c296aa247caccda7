"""A backend over another: the parallel backends (tensor, pipeline) place weights and run primitives through the
backend they wrap (cpu or reference) and change only what they split."""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend, Linear, WeightSource
from .group import ProcessGroup
from .leader import Leader


class WrappingBackend(Backend):
    def __init__(self, inner: Backend, group: ProcessGroup, name: str, world: ProcessGroup | None = None):
        """`group`: the ranks this backend splits over; `world`: every rank (default: the same), whose rank 0 sends
        the steps (and logits requests) to all the others."""
        world = world or group
        self.inner, self.group = inner, group
        self.name = f"{inner.name} ({name}, rank {group.rank} of {group.world_size})"
        self.primitives = inner.primitives
        self.default_kv_type = inner.default_kv_type
        self.leader = Leader(world) if world.rank == 0 else None
        self.prefix_mirror = self.leader  # the other ranks' heads or layers: their own copies of every prefix block

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return self.inner.from_host(array)

    def to_host(self, array):
        return None if array is None else self.inner.to_host(array)

    def vector(self, values: np.ndarray) -> np.ndarray:
        return self.inner.vector(values)

    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        return self.inner.linear(source, names, in_features, out_features)

    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]):
        return self.inner.expert_linears(source, names, n_experts, in_features, out_features)

    def embedding(self, source: WeightSource, name: str, vocab_size: int, width: int):
        return self.inner.embedding(source, name, vocab_size, width)

    def reduce_shards(self, partial: np.ndarray) -> np.ndarray:
        return self.inner.reduce_shards(partial)  # a pipeline stage over tensor-parallel shards sums theirs

    def model_heads(self, held: int, kind: str) -> int:
        return self.inner.model_heads(held, kind)

    def over_all_heads(self, heads: np.ndarray, kind: str, f):
        return self.inner.over_all_heads(heads, kind, f)

    def begin_step(self, tokens: np.ndarray, caches, lengths) -> None:
        if self.leader is not None:
            self.leader.settle(self.leader.send_step(tokens, caches, lengths))

    def finish(self, source: WeightSource) -> None:
        self.inner.finish(source)
