"""Prefix caching: keys/values of prompt prefixes already computed, reused by later prompts.

Prompts are cut into blocks of `block_size` tokens. Block i is keyed by a SHA-256 chained over the
exact tokens of blocks 0..i, so a hit means the whole prefix up to that block is identical. The chain
starts from the request's namespace (b"": the shared one), so prefixes cached in one namespace are
invisible to every other (the server gives each API key its own, and `cache_salt` splits further). A new
sequence copies the cached blocks of its longest cached prefix into its own KV cache and only runs
the rest. Least recently used blocks are evicted beyond `capacity_tokens`.

In a parallel group rank 0 decides (its engine holds this cache) and a `mirror` (parallel/leader.py's Leader) has
every other rank keep, reuse and drop the same blocks of its own share of the caches: a block kept here is kept
there (`stored`, which gives the mirror's handle for it), a load here is the same load there (`loaded`), and a
block dropped here (evicted, or with the whole cache) is dropped there once its handle is gone.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

from ..cache.kv import KVCache


class PrefixCache:
    def __init__(self, *, block_size: int = 32, capacity_tokens: int = 4096, mirror=None):
        self.block_size = block_size
        self.capacity_blocks = capacity_tokens // block_size
        self.mirror = mirror
        # key -> (keys, values, the mirror's handle or None), keys and values (n_layers, n_kv_heads, block_size, row)
        # each, as KVCache stores them
        self.blocks: OrderedDict[bytes, tuple[np.ndarray, np.ndarray, object]] = OrderedDict()
        self.hit_tokens = 0  # prompt tokens served from the cache, for /metrics

    def _keys(self, ids: Sequence[int], namespace: bytes) -> Iterator[bytes]:
        """The chained hash of every full block of `ids` in `namespace`, in order."""
        digest = namespace
        for start in range(0, len(ids) - self.block_size + 1, self.block_size):
            block = np.asarray(ids[start:start + self.block_size], dtype=np.int64).tobytes()
            digest = hashlib.sha256(digest + block).digest()
            yield digest

    def load(self, ids: Sequence[int], cache: KVCache, namespace: bytes = b"") -> int:
        """Fill the empty `cache` with the longest cached prefix of `ids` that leaves at least one token to
        run (its logits are needed); returns how many tokens it holds now."""
        found = []
        for index, key in enumerate(self._keys(ids, namespace)):
            if (index + 1) * self.block_size >= len(ids) or key not in self.blocks:
                break
            self.blocks.move_to_end(key)
            found.append(self.blocks[key])
        for keys, values, handle in found:  # (n_layers, n_kv_heads, block_size, row) as the cache stores them
            cache.extend(keys, values)
            if self.mirror is not None:
                self.mirror.loaded(cache, handle)
        self.hit_tokens += cache.offset
        return cache.offset

    def store(self, ids: Sequence[int], cache: KVCache, namespace: bytes = b"") -> None:
        """Remember the full blocks of `ids` in `namespace`, whose keys/values `cache` holds from position 0."""
        for index, key in enumerate(self._keys(ids[:cache.offset], namespace)):
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            start, stop = index * self.block_size, (index + 1) * self.block_size
            handle = None if self.mirror is None else self.mirror.stored(cache, start, stop)
            self.blocks[key] = (*cache.rows(start, stop), handle)
            while len(self.blocks) > self.capacity_blocks:
                self.blocks.popitem(last=False)
