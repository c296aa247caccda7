"""The only part of the engine that touches the network: one batched forward pass per step."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..cache.kv import KVCache


class BatchRunner:
    def __init__(self, net):
        self.net = net

    def run(self, work: Sequence[tuple[KVCache, list[int]]]) -> torch.Tensor:
        """Feed each cache its new tokens, all packed in one forward pass; logits (len(work), vocab) of
        each sequence's last new token."""
        tokens = torch.tensor([token for _, ids in work for token in ids], dtype=torch.long)  # (N,)
        return self.net.forward_batch(tokens, [cache for cache, _ in work], [len(ids) for _, ids in work])

    def embed(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Mean-pooled, L2-normalized final hidden state (after the output norm) of `ids`: (d_model,)."""
        hidden = self.net.hidden_states(torch.tensor(ids, dtype=torch.long), [cache], [len(ids)])  # (T, d_model)
        return F.normalize(hidden.mean(0), dim=0)
