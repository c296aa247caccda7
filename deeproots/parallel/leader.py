"""Rank 0's step plan, and the loop the other ranks run to follow it.

Rank 0 keeps the engine (scheduler, sampling, prefix cache) and its own KV caches; before each forward pass it sends
the step: which caches (a key per cache, its offset, the new tokens' count, its size and element type) and the
tokens, plus the keys of caches it dropped since. Every rank then runs the same layers over its own heads, the
collectives inside keeping them in step. For logits it sends the final hidden rows sampling needs. A follower's
caches take rank 0's offsets, so a truncation there (speculative decoding, a shared prefix) is one here too.
"""

from __future__ import annotations

import itertools
import logging
import weakref

import numpy as np

from ..cache.kv import KV_TYPES
from ..errors import DeeprootsError
from .group import ClusterLostError

STEP, LOGITS, STOP = 1, 2, 3
KV_TYPE_CODES = list(KV_TYPES)  # a cache's element type by index
FIELDS = 5  # per cache in a step: key, offset, new tokens, max_tokens, kv type code

log = logging.getLogger("deeproots.parallel")


class Leader:
    def __init__(self, group):
        self.group = group
        self.keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # rank 0's cache -> its key
        self.next_key = itertools.count(1)
        self.freed: list[int] = []  # keys of caches gone since the last step

    def _key(self, cache) -> int:
        key = self.keys.get(cache)
        if key is None:
            key = self.keys[cache] = next(self.next_key)
            weakref.finalize(cache, self.freed.append, key)
        return key

    def send_step(self, tokens: np.ndarray, caches, lengths) -> None:
        freed, self.freed = self.freed, []
        described = [(self._key(cache), cache.offset, T, cache.max_tokens, KV_TYPE_CODES.index(cache.kv_type))
                     for cache, T in zip(caches, lengths)]
        message = [STEP, len(described), len(tokens), len(freed), *itertools.chain(*described), *tokens, *freed]
        self.group.broadcast(np.array(message, np.int64), np.int64, idle=True)

    def send_logits(self, hidden: np.ndarray) -> None:
        self.group.broadcast(np.array([LOGITS, *hidden.shape], np.int64), np.int64, idle=True)
        self.group.broadcast(np.ascontiguousarray(hidden, dtype=np.float32).reshape(-1), np.float32)

    def stop(self) -> None:
        self.group.broadcast(np.array([STOP], np.int64), np.int64, idle=True)


def follow(loaded, group) -> None:
    """A follower's life: run every step rank 0 sends over this rank's shard (`loaded`: its LoadedModel) until STOP."""
    caches: dict[int, object] = {}
    net = loaded.net
    while True:
        message = group.broadcast(None, np.int64, idle=True)
        kind = int(message[0])
        if kind == STOP:
            return
        if kind == LOGITS:
            rows, width = int(message[1]), int(message[2])
            hidden = group.broadcast(None, np.float32).reshape(rows, width)
            if hasattr(net, "output"):  # a later pipeline stage has no output projection: it only listens
                net.logits(hidden)
            continue
        n_caches, n_tokens, n_freed = (int(v) for v in message[1:4])
        described = message[4:4 + FIELDS * n_caches].reshape(n_caches, FIELDS)
        tokens = message[4 + FIELDS * n_caches:4 + FIELDS * n_caches + n_tokens]
        for key in message[len(message) - n_freed:]:
            caches.pop(int(key), None)
        step_caches = []
        for key, offset, _, max_tokens, kv_code in described.tolist():
            cache = caches.get(key)
            if cache is None:
                cache = caches[key] = loaded.new_cache(max_tokens, KV_TYPE_CODES[kv_code])
            cache.offset = offset
            step_caches.append(cache)
        try:
            net.hidden_states(tokens, step_caches, described[:, 2].tolist())
        except ClusterLostError:
            raise
        except DeeprootsError as error:  # rank 0 met the same error at the same point (the same offsets and sizes)
            log.warning("rank %d: step failed as on rank 0: %s", group.rank, error)
