"""The only part of the engine that touches the network: one batched forward pass per step."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..cache.kv import KVCache

Results = tuple[np.ndarray | None, dict[int, np.ndarray]]  # (logits, hidden states by index): BatchRunner.launch


class BatchRunner:
    def __init__(self, net):
        self.net = net

    def launch(self, work: Sequence[tuple[KVCache, list[int]]], embedding: Sequence[bool],
               logit_rows: Sequence[int] | None = None) -> Callable[[], Results]:
        """Feed each cache its new tokens, all packed in one forward pass; the returned call gives its results once
        the pass is done (a pipeline's rank 0 may launch another pass meanwhile: Llama.launch).

        The results: the logits (R, vocab) of the last logit_rows[i] new tokens (default 1; more for speculative
        decoding's drafts) of each sequence that is not an embedding (None when there are none), in order, and, by
        index in `work`, the final hidden states (T, d_model) of every new token of each embedding sequence.
        """
        tokens = np.array([token for _, ids in work for token in ids], dtype=np.int64)  # (N,)
        lengths = [len(ids) for _, ids in work]
        caches = [cache for cache, _ in work]
        # A pure decode step (one token and so one logits row each; no prompt chunk longer than one token, no drafts,
        # no embedding) may be the backend's own (the CUDA backend's graph replay); the CPU's declines: None.
        if all(n == 1 for n in lengths) and not any(embedding):
            logits = self.net.backend.decode_step(self.net, tokens, caches)  # (B, vocab) or None
            if logits is not None:
                return lambda: (logits, {})
        states = self.net.launch(tokens, caches, lengths)
        ends = np.cumsum(lengths)
        counts = logit_rows or [1] * len(work)
        rows = [row for index, embeds in enumerate(embedding) if not embeds
                for row in range(ends[index] - counts[index], ends[index])]

        def results() -> Results:
            hidden = states()  # (N, d_model)
            logits = self.net.logits(hidden[rows]) if rows else None  # (R, vocab)
            embedded = {index: self.net.backend.to_host(hidden[ends[index] - lengths[index]:ends[index]]).copy()
                        for index, embeds in enumerate(embedding) if embeds}  # copies: `hidden` is not kept
            return logits, embedded
        return results


def pooled_embedding(hidden: list[np.ndarray]) -> np.ndarray:
    """Mean-pooled, L2-normalized final hidden states of a whole input, given chunk by chunk: (d_model,) float32."""
    pooled = np.concatenate(hidden).mean(axis=0, dtype=np.float64)  # (d_model,)
    return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
