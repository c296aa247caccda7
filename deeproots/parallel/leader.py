"""Rank 0's step plan, and the loop the other ranks run to follow it.

Rank 0 keeps the engine (scheduler, sampling, prefix cache) and its own KV caches; before each forward pass it sends
the step: which caches (a key per cache, its offset, the new tokens' count, its size and element type) and the
tokens, the prefix cache's operations since the last step (a block kept from a cache's rows, a block appended to a
cache), plus the keys of caches and prefix blocks it dropped since. A follower applies the operations to its own
share of the caches, in rank 0's order, then drops what rank 0 dropped: every rank's caches and blocks hold the same
positions. Every rank then runs the same layers over its own heads, the collectives inside keeping them in step.
For logits it sends the final hidden rows sampling needs. A follower's caches take rank 0's offsets, so a truncation
there (speculative decoding, a shared prefix) is one here too.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import deque
from typing import Callable

import numpy as np

from ..cache.kv import KV_TYPES
from ..errors import DeeprootsError
from .group import ClusterLostError

STEP, LOGITS, STOP = 1, 2, 3
KV_TYPE_CODES = list(KV_TYPES)  # a cache's element type by index
FIELDS = 5  # per cache in a step: key, offset, new tokens, max_tokens, kv type code
# A prefix-cache operation in a step, OP_FIELDS numbers: (KEEP, block, cache, start, stop): positions start..stop of
# the cache become the block; (APPEND, block, cache, max_tokens, kv type code): the block is appended to the cache
# (a new one: made with that size and type).
KEEP, APPEND = 1, 2
OP_FIELDS = 5

log = logging.getLogger("deeproots.parallel")


class Block:
    """Rank 0's handle of a prefix block, which the prefix cache keeps beside its rows: when it goes, the block's
    copies on the other ranks go."""
    __slots__ = ("__weakref__",)


class Leader:
    """Rank 0's messages, sent without waiting for the ranks to take them (a later pipeline stage may still be on an
    earlier step); every rank takes them in order, so once a step's results are back every rank has had each message
    up to that step's (`settle`)."""

    def __init__(self, group):
        self.group = group
        # rank 0's cache or prefix Block -> its key (one count for both)
        self.keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.next_key = itertools.count(1)
        self.freed: list[int] = []  # keys of caches and blocks gone since the last step
        self.operations: list[tuple[int, ...]] = []  # the prefix cache's since the last step (OP_FIELDS each)
        self.numbers = itertools.count(1)
        self.unsettled: deque[tuple[int, Callable[[], None]]] = deque()  # (message number, wait until all have it)

    def _key(self, thing) -> int:
        key = self.keys.get(thing)
        if key is None:
            key = self.keys[thing] = next(self.next_key)
            weakref.finalize(thing, self.freed.append, key)
        return key

    def stored(self, cache, start: int, stop: int) -> Block:
        """The prefix cache kept positions start..stop of `cache` as a block: so does every rank (of its own)."""
        block = Block()
        self.operations.append((KEEP, self._key(block), self._key(cache), start, stop))
        return block

    def loaded(self, cache, block: Block) -> None:
        """The prefix cache appended `block` to `cache`: so does every rank."""
        self.operations.append((APPEND, self._key(block), self._key(cache), cache.max_tokens,
                                KV_TYPE_CODES.index(cache.kv_type)))

    def _post(self, values: list | np.ndarray, dtype, idle: bool = False) -> int:
        number = next(self.numbers)
        self.unsettled.append((number, self.group.post(np.asarray(values, dtype), dtype, idle=idle)))
        return number

    def settle(self, number: int) -> None:
        """Wait until every rank has message `number` and the ones before it."""
        while self.unsettled and self.unsettled[0][0] <= number:
            self.unsettled.popleft()[1]()

    def send_step(self, tokens: np.ndarray, caches, lengths) -> int:
        """Start sending the step; returns its number (`settle`)."""
        described = [(self._key(cache), cache.offset, T, cache.max_tokens, KV_TYPE_CODES.index(cache.kv_type))
                     for cache, T in zip(caches, lengths)]
        (freed, self.freed), (operations, self.operations) = (self.freed, []), (self.operations, [])
        message = [STEP, len(described), len(tokens), len(operations), len(freed), *itertools.chain(*described),
                   *itertools.chain(*operations), *tokens, *freed]
        return self._post(message, np.int64, idle=True)

    def send_logits(self, hidden: np.ndarray) -> None:
        self._post([LOGITS, *hidden.shape], np.int64, idle=True)
        self._post(np.ascontiguousarray(hidden, dtype=np.float32).reshape(-1), np.float32)

    def stop(self) -> None:
        self.settle(self._post([STOP], np.int64, idle=True))


def follow(loaded, group) -> None:
    """A follower's life: run every step rank 0 sends over this rank's shard (`loaded`: its LoadedModel) until STOP."""
    follower = Follower(loaded, group)
    while True:
        message = group.broadcast(None, np.int64, idle=True)
        kind = int(message[0])
        if kind == STOP:
            return
        if kind == LOGITS:
            rows, width = int(message[1]), int(message[2])
            hidden = group.broadcast(None, np.float32).reshape(rows, width)
            if hasattr(loaded.net, "output"):  # a later pipeline stage has no output projection: it only listens
                loaded.net.logits(hidden)
            continue
        follower.step(message)


class Follower:
    """A follower's caches and prefix blocks, by rank 0's keys, and the steps it runs over them."""

    def __init__(self, loaded, group):
        self.loaded, self.group = loaded, group
        self.caches: dict[int, object] = {}
        self.blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a prefix block's keys and values

    def _cache(self, key: int, max_tokens: int, kv_code: int):
        if key not in self.caches:
            self.caches[key] = self.loaded.new_cache(max_tokens, KV_TYPE_CODES[kv_code])
        return self.caches[key]

    def step(self, message: np.ndarray) -> None:
        n_caches, n_tokens, n_operations, n_freed = (int(v) for v in message[1:5])
        ends = np.cumsum([5, FIELDS * n_caches, OP_FIELDS * n_operations, n_tokens, n_freed])  # of each part
        described = message[ends[0]:ends[1]].reshape(n_caches, FIELDS)
        operations = message[ends[1]:ends[2]].reshape(n_operations, OP_FIELDS)
        tokens, freed = message[ends[2]:ends[3]], message[ends[3]:ends[4]]
        for kind, block, key, a, b in operations.tolist():  # a, b: start and stop, or max_tokens and kv code
            if kind == KEEP:
                self.blocks[block] = self.caches[key].rows(a, b)
            else:
                self._cache(key, a, b).extend(*self.blocks[block])
        for key in freed.tolist():  # after the operations, which may read them
            self.caches.pop(key, None)
            self.blocks.pop(key, None)
        step_caches = []
        for key, offset, _, max_tokens, kv_code in described.tolist():
            cache = self._cache(key, max_tokens, kv_code)
            cache.offset = offset
            step_caches.append(cache)
        try:
            self.loaded.net.hidden_states(tokens, step_caches, described[:, 2].tolist())
        except ClusterLostError:
            raise
        except DeeprootsError as error:  # rank 0 met the same error at the same point (the same offsets and sizes)
            log.warning("rank %d: step failed as on rank 0: %s", self.group.rank, error)
