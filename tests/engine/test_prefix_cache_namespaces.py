"""Prefix-cache namespaces: a prefix cached in one namespace is found there and nowhere else."""

import numpy as np

from deeproots.cache.kv import KVCache
from deeproots.engine.prefix_cache import PrefixCache

SHAPE = (2, 2, 8)  # n_layers, n_kv_heads, head_dim


def filled_cache(ids: list[int]) -> KVCache:
    """A cache holding distinct random keys/values for every position of `ids`."""
    cache = KVCache(*SHAPE, len(ids))
    rng = np.random.default_rng(7)
    # (n_layers, n_kv_heads, tokens, head_dim)
    cache.extend(rng.standard_normal(cache.keys.shape, dtype=np.float32),
                 rng.standard_normal(cache.values.shape, dtype=np.float32))
    return cache


def loaded(prefix: PrefixCache, ids: list[int], namespace: bytes) -> KVCache:
    cache = KVCache(*SHAPE, len(ids))
    prefix.load(ids, cache, namespace)
    return cache


def test_a_prefix_is_found_only_in_the_namespace_that_stored_it():
    ids = list(range(100, 140))  # one full 32-token block and 8 more tokens
    prefix = PrefixCache(block_size=32, capacity_tokens=256)
    source = filled_cache(ids)
    prefix.store(ids, source, b"key A")

    same = loaded(prefix, ids, b"key A")
    assert same.offset == 32
    assert np.array_equal(same.keys[:, :, :32], source.keys[:, :, :32])
    assert np.array_equal(same.values[:, :, :32], source.values[:, :, :32])
    assert loaded(prefix, ids, b"key B").offset == 0
    assert loaded(prefix, ids, b"").offset == 0  # the shared namespace of a server without keys
    assert prefix.hit_tokens == 32


def test_the_shared_namespace_still_shares():
    ids = list(range(7, 47))
    prefix = PrefixCache(block_size=32, capacity_tokens=256)
    prefix.store(ids, filled_cache(ids))
    assert loaded(prefix, ids, b"").offset == 32
    assert loaded(prefix, ids[:32] + [1, 2, 3], b"").offset == 32  # a different tail after the same block
