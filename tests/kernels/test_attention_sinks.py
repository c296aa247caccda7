"""Attention sinks (gpt-oss): a learned logit per head in the softmax's denominator, with no value.

The reference formula and the C kernel against transformers' own gpt-oss attention (eager_attention_forward of
modeling_gpt_oss, in float64), with and without a sliding window, over f32, f16 and q8_0 caches; the batched kernel
against the per-sequence loop, bit for bit; and no sinks gives the same bits as before (the kernel's tests).
"""

import types

import numpy as np
import pytest
import torch

from deeproots.backends.base import per_sequence
from deeproots.backends.cpu import FAST, _rotate_fast
from deeproots.backends.formulas import RotaryEmbedding, causal_attention
from deeproots.cache.kv import KVCache, dequantize_rows
from deeproots.errors import RequestError
from deeproots.kernels import cached_attention

from test_attention import cache_rows, visible_keys


def transformers_attention(q, k, v, scale, sinks, window=None) -> np.ndarray:
    """gpt-oss's attention as transformers computes it, float64, on the values the cache holds: (T, n_heads * D)."""
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    if k.dtype == np.uint8:
        k, v = dequantize_rows(k), dequantize_rows(v)
    (H, T, _), (G, L, _) = q.shape, k.shape
    module = types.SimpleNamespace(num_key_value_groups=H // G, sinks=torch.from_numpy(sinks.astype(np.float64)),
                                   training=False)
    mask = torch.where(torch.from_numpy(visible_keys(T, L, window)), 0.0, -torch.inf).double()[None, None]
    as_torch = [torch.from_numpy(a.astype(np.float64))[None] for a in (q, k, v)]  # (1, heads, rows, D)
    out, _ = eager_attention_forward(module, *as_torch, mask, scale)  # (1, T, H, D)
    return out[0].reshape(T, -1).numpy()


def inputs(H, G, T, L, D, kv_type, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((H, T, D), dtype=np.float32)
    k, v = (cache_rows(rng.standard_normal((G, L, D), dtype=np.float32), kv_type) for _ in range(2))
    sinks = (rng.standard_normal(H) * 3).astype(np.float32)  # some above every score, some below
    return q, k, v, sinks


@pytest.mark.slow  # imports transformers
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0"])
def test_kernel_and_formula_match_transformers(kv_type, window):
    for H, G, T, L, D in [(4, 2, 7, 7, 64), (8, 2, 1, 90, 64), (6, 3, 20, 150, 32)]:
        q, k, v, sinks = inputs(H, G, T, L, D, kv_type, seed=T + L)
        expected = transformers_attention(q, k, v, 0.125, sinks, window)
        assert np.abs(cached_attention(q, k, v, 0.125, window=window, sinks=sinks) - expected).max() < 1e-5
        assert np.abs(causal_attention(q, k, v, 0.125, window=window, sinks=sinks) - expected).max() < 1e-5


def test_a_sink_takes_weight_from_the_keys():
    """A very large sink leaves almost nothing for the values; a very small one changes nothing."""
    q, k, v, _ = inputs(2, 1, 3, 3, 32, "f32", seed=1)
    plain = cached_attention(q, k, v, 0.125)
    assert np.abs(cached_attention(q, k, v, 0.125, sinks=np.full(2, 80.0, np.float32))).max() < 1e-20
    np.testing.assert_array_equal(cached_attention(q, k, v, 0.125, sinks=np.full(2, -200.0, np.float32)), plain)


@pytest.mark.parametrize("kv_type", ["f32", "f16", "q8_0"])
def test_batched_attention_with_sinks_matches_the_loop(kv_type):
    n_heads, n_kv, D, n_layers = 4, 2, 64, 2
    rope = RotaryEmbedding(D, 10000.0, 200, style="neox")
    loop = per_sequence(_rotate_fast, cached_attention)
    rng = np.random.default_rng(3)
    sinks = rng.standard_normal(n_heads).astype(np.float32)
    lengths = [5, 1, 30]
    for window in (None, 8):
        caches_a = [KVCache(n_layers, n_kv, D, 200, kv_type) for _ in lengths]
        caches_b = [KVCache(n_layers, n_kv, D, 200, kv_type) for _ in lengths]
        qkv = rng.standard_normal((sum(lengths), n_heads + 2 * n_kv, D), dtype=np.float32)
        out_a = loop(rope, qkv.copy(), n_heads, caches_a, lengths, 0, 0.125, window, sinks)
        out_b = FAST.attend_sequences(rope, qkv.copy(), n_heads, caches_b, lengths, 0, 0.125, window, sinks)
        assert np.array_equal(out_a, out_b)
        assert not np.array_equal(out_a, loop(rope, qkv.copy(), n_heads, caches_a, lengths, 0, 0.125, window))


@pytest.mark.parametrize("sinks", [np.zeros(3, np.float32), np.zeros(4, np.float64), np.zeros((4, 1), np.float32),
                                   [0.0] * 4])
def test_bad_sinks_raise_request_error(sinks):
    q, k, v, _ = inputs(4, 2, 2, 2, 32, "f32", seed=2)
    with pytest.raises(RequestError, match="sinks"):
        cached_attention(q, k, v, 0.125, sinks=sinks)
