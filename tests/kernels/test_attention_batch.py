"""The batched attention primitive (FAST.attend_sequences: one compiled call doing RoPE, the cache update and
attention for every sequence) against the per-sequence loop it replaces: bit-identical outputs, q/k rows and cache
contents, over f32, f16 and q8_0 caches, rows of prefill and decode mixed in one call or one sequence alone, with and
without a sliding window, on one thread and on several."""

import zlib

import numpy as np
import pytest

from deeproots.cache.kv import KVCache
from deeproots.errors import RequestError
from deeproots.kernels import cached_attention, get_num_threads, set_num_threads
from deeproots.backends.formulas import RotaryEmbedding
from deeproots.backends.base import per_sequence
from deeproots.backends.cpu import FAST, _rotate_fast

LOOP = per_sequence(_rotate_fast, cached_attention)
N_LAYERS, MAX_TOKENS = 3, 200


def caches_at(kv_type: str, n_kv: int, D: int, offsets: list[int], seed: int) -> list[KVCache]:
    """Caches already holding `offsets[b]` positions of random keys and values in every layer."""
    rng = np.random.default_rng(seed)
    caches = []
    for offset in offsets:
        cache = KVCache(N_LAYERS, n_kv, D, MAX_TOKENS, kv_type)
        for layer in range(N_LAYERS):
            cache.update(layer, rng.standard_normal((n_kv, offset, D), dtype=np.float32),
                         rng.standard_normal((n_kv, offset, D), dtype=np.float32))
        cache.advance(offset)
        caches.append(cache)
    return caches


def clone(caches: list[KVCache]) -> list[KVCache]:
    copies = []
    for cache in caches:
        copy = KVCache(N_LAYERS, cache.keys.shape[1], 1, MAX_TOKENS)  # replaced below
        copy.kv_type, copy.keys, copy.values, copy.offset = cache.kv_type, cache.keys.copy(), cache.values.copy(), \
            cache.offset
        copies.append(copy)
    return copies


@pytest.mark.parametrize("sequences", ["all", "prefill", "decode"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("window", [None, 5, 64])
@pytest.mark.parametrize("style", ["interleaved", "neox"])
@pytest.mark.parametrize("kv_type,D,heads", [("f32", 64, (9, 3)), ("f16", 40, (4, 4)), ("f16", 128, (8, 2)),
                                             ("q8_0", 64, (6, 2)), ("q8_0", 96, (4, 1))])
def test_batched_attention_matches_the_per_sequence_loop(kv_type, D, heads, style, window, threads, sequences):
    n_heads, n_kv = heads
    offsets, lengths = [0, 7, 70, 3, 130], [5, 1, 1, 40, 1]  # prefill rows, decode rows, an empty cache
    picked = {"all": slice(None), "prefill": slice(3, 4), "decode": slice(2, 3)}[sequences]  # or one sequence alone
    offsets, lengths = offsets[picked], lengths[picked]
    rope = RotaryEmbedding(D if D != 96 else 64, 10000.0, MAX_TOKENS, style=style)
    # zlib.crc32, not hash(): str hashes change with every interpreter (PYTHONHASHSEED), and so would the inputs
    rng = np.random.default_rng(zlib.crc32(repr((kv_type, D, style, window)).encode()))
    old = get_num_threads()
    set_num_threads(threads)
    try:
        for layer in range(N_LAYERS):
            base = caches_at(kv_type, n_kv, D, offsets, seed=layer)
            # qkv as the model has it: a view of a (N, heads * D) product, here with a wider row stride
            wide = rng.standard_normal((sum(lengths), (n_heads + 2 * n_kv) * D + 8), dtype=np.float32) * 3
            qkv_a = wide[:, :(n_heads + 2 * n_kv) * D].reshape(-1, n_heads + 2 * n_kv, D)
            wide_b = wide.copy()
            qkv_b = wide_b[:, :(n_heads + 2 * n_kv) * D].reshape(-1, n_heads + 2 * n_kv, D)
            assert np.shares_memory(qkv_a, wide) and np.shares_memory(qkv_b, wide_b)  # views, not copies
            caches_a, caches_b = base, clone(base)
            out_a = LOOP(rope, qkv_a, n_heads, caches_a, lengths, layer, 0.125, window)
            out_b = FAST.attend_sequences(rope, qkv_b, n_heads, caches_b, lengths, layer, 0.125, window)
            assert out_b.shape == out_a.shape
            assert np.array_equal(out_a, out_b)  # bit-identical (no nan here)
            assert np.array_equal(qkv_a, qkv_b)  # the same RoPE in place
            for a, b in zip(caches_a, caches_b):
                assert a.offset == b.offset  # neither advances
                assert np.array_equal(a.keys.view(np.uint8), b.keys.view(np.uint8))
                assert np.array_equal(a.values.view(np.uint8), b.values.view(np.uint8))
    finally:
        set_num_threads(old)


def test_batched_attention_steps_like_the_loop():
    """Several steps with the same caches and lengths: the plan the first layer builds follows the offsets."""
    n_heads, n_kv, D = 4, 2, 64
    rope = RotaryEmbedding(D, 10000.0, MAX_TOKENS)
    caches_a = caches_at("f16", n_kv, D, [3, 9], seed=1)
    caches_b = clone(caches_a)
    rng = np.random.default_rng(5)
    for step in range(4):
        lengths = [1, 1] if step else [4, 2]
        for layer in range(N_LAYERS):
            qkv = rng.standard_normal((sum(lengths), n_heads + 2 * n_kv, D), dtype=np.float32)
            qkv_b = qkv.copy()
            out_a = LOOP(rope, qkv, n_heads, caches_a, lengths, layer, 0.125, None)
            out_b = FAST.attend_sequences(rope, qkv_b, n_heads, caches_b, lengths, layer, 0.125, None)
            assert np.array_equal(out_a, out_b)
        for a, b, t in zip(caches_a, caches_b, lengths):
            a.advance(t)
            b.advance(t)
            assert np.array_equal(a.keys.view(np.uint8), b.keys.view(np.uint8))


def test_batched_attention_refuses_a_full_cache():
    rope = RotaryEmbedding(64, 10000.0, MAX_TOKENS)
    caches = caches_at("f32", 1, 64, [MAX_TOKENS - 1, 2], seed=0)
    with pytest.raises(RequestError, match="holds"):
        FAST.attend_sequences(rope, np.zeros((3, 4, 64), np.float32), 2, caches, [2, 1], 0, 0.125, None)


def test_batched_attention_refuses_a_read_only_qkv():
    """RoPE rotates qkv in place: a read-only array is refused before anything is written."""
    rope = RotaryEmbedding(64, 10000.0, MAX_TOKENS)
    caches = caches_at("f16", 1, 64, [3, 2], seed=0)
    qkv = np.zeros((2, 4, 64), np.float32)
    qkv.flags.writeable = False
    with pytest.raises(RequestError):
        FAST.attend_sequences(rope, qkv, 2, caches, [1, 1], 0, 0.125, None)
