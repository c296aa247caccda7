"""The only part of the engine that touches the network: one batched forward pass per step."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..cache.kv import KVCache


class BatchRunner:
    def __init__(self, net):
        self.net = net

    def run(self, work: Sequence[tuple[KVCache, list[int]]]) -> np.ndarray:
        """Feed each cache its new tokens, all packed in one forward pass; logits (len(work), vocab) of
        each sequence's last new token."""
        tokens = np.array([token for _, ids in work for token in ids], dtype=np.int64)  # (N,)
        return self.net.forward_batch(tokens, [cache for cache, _ in work], [len(ids) for _, ids in work])

    def embed(self, ids: list[int], cache: KVCache) -> np.ndarray:
        """Mean-pooled, L2-normalized final hidden state (after the output norm) of `ids`: (d_model,)."""
        hidden = self.net.hidden_states(np.asarray(ids, dtype=np.int64), [cache], [len(ids)])  # (T, d_model)
        pooled = hidden.mean(axis=0, dtype=np.float64)  # (d_model,)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
