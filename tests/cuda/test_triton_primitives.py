"""RMSNorm and decode attention kernels (kernels/triton/) against the numpy formulas (backends/formulas.py) on random
inputs of odd and aligned sizes.

Bounds: RMSNorm, 4 float32 roundings of d-term sums (the formula's mean is float64): |diff| <= 1e-5 relative to
the largest output. Attention: an online softmax over L keys in float32 against a two-pass one, float16 keys and
values read exactly: |diff| <= 1e-5 (outputs are averages of values of size ~1).
"""

import numpy as np
import pytest
import torch

from deeproots.backends.formulas import RotaryEmbedding, causal_attention, gelu_mul, rms_norm, silu_mul
from deeproots.cache.kv import KVCache
from deeproots.kernels.triton.attention import BLOCK_L, decode_attention
from deeproots.kernels.triton.gating import gated
from deeproots.kernels.triton.norm import rms_norm as triton_rms_norm
from deeproots.kernels.triton.rope import rotate_ as triton_rotate_


@pytest.mark.parametrize("rows, d", [(1, 64), (5, 96), (3, 33)])
def test_rms_norm_matches_formula(rows, d, device):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((rows, d)) * 3).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    ours = triton_rms_norm(torch.from_numpy(x).to(device), torch.from_numpy(w).to(device), 1e-6).cpu().numpy()
    expected = rms_norm(x, w, 1e-6)
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("n_heads, n_kv, L, D, window, dtype", [
    (4, 2, 1, 32, None, np.float32),  # the first token
    (4, 2, BLOCK_L + 7, 32, None, np.float16),  # a partial second chunk, grouped heads, an f16 cache
    (3, 3, 2 * BLOCK_L, 24, None, np.float32),  # head size not a power of two, aligned length
    (4, 1, BLOCK_L + 9, 16, 5, np.float16),  # a sliding window shorter than the cache
    (2, 2, 10, 16, 64, np.float32),  # a window longer than the cache
])
def test_decode_attention_matches_formula(n_heads, n_kv, L, D, window, dtype, device):
    rng = np.random.default_rng(L)
    q = rng.standard_normal((n_heads, 1, D)).astype(np.float32)
    k = rng.standard_normal((n_kv, L, D)).astype(dtype)
    v = rng.standard_normal((n_kv, L, D)).astype(dtype)
    scale = 1 / np.sqrt(D)
    ours = decode_attention(*(torch.from_numpy(a).to(device) for a in (q, k, v)), scale, window).cpu().numpy()
    assert np.abs(ours - causal_attention(q, k, v, scale, window=window)).max() <= 1e-5


@pytest.mark.parametrize("window", [None, 7])
def test_decode_attention_reads_q8_0_rows(window, device):
    """Keys and values as a q8_0 cache stores them (cache/kv.py: ggml's quantizer): the formula dequantizes them."""
    rng = np.random.default_rng(2)
    cache = KVCache(1, 2, 64, BLOCK_L + 5, "q8_0")
    k, v = cache.update(0, rng.standard_normal((2, BLOCK_L + 5, 64)).astype(np.float32),
                        rng.standard_normal((2, BLOCK_L + 5, 64)).astype(np.float32))  # (2, L, 68) uint8
    q = rng.standard_normal((4, 1, 64)).astype(np.float32)
    ours = decode_attention(*(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (q, k, v)), 0.125,
                            window).cpu().numpy()
    assert np.abs(ours - causal_attention(q, k, v, 0.125, window=window)).max() <= 1e-5


def test_decode_attention_reads_a_strided_cache_view(device):
    """The cache's layer view (n_kv, L, D) of a (n_kv, max_tokens, D) buffer: rows contiguous, heads strided."""
    rng = np.random.default_rng(0)
    buffer = rng.standard_normal((2, 50, 16)).astype(np.float32)
    q = rng.standard_normal((4, 1, 16)).astype(np.float32)
    stored = torch.from_numpy(buffer).to(device)
    ours = decode_attention(torch.from_numpy(q).to(device), stored[:, :20], stored[:, :20], 0.25).cpu().numpy()
    expected = causal_attention(q, buffer[:, :20], buffer[:, :20], 0.25)
    assert np.abs(ours - expected).max() <= 1e-5


@pytest.mark.parametrize("style, rope_dim, head_dim", [("interleaved", 16, 16), ("neox", 32, 32),
                                                       ("neox", 12, 20)])  # partial rotation, odd pair count
def test_rope_matches_formula_in_place_on_a_qkv_view(style, rope_dim, head_dim, device):
    rope = RotaryEmbedding(rope_dim, 10000.0, 40, style=style)
    rng = np.random.default_rng(rope_dim)
    qkv = rng.standard_normal((5, 3 + 2 * 1, head_dim)).astype(np.float32)  # (T, q + k + v heads, head_dim)
    expected = qkv.copy()
    rope.rotate_(expected[:, :4], 7)
    ours = torch.from_numpy(qkv).to(device)
    positions = torch.arange(7, 12, device=device)
    triton_rotate_(ours[:, :4], torch.from_numpy(rope.cos).to(device), torch.from_numpy(rope.sin).to(device),
                   positions, rope_dim, style == "interleaved")
    assert np.abs(ours.cpu().numpy() - expected).max() <= 1e-5  # v heads untouched: exactly


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the interpreter's numpy: exp(100) is inf, as meant
@pytest.mark.parametrize("formula, gelu", [(silu_mul, False), (gelu_mul, True)])
@pytest.mark.parametrize("rows, ffn", [(1, 64), (3, 1100)])  # one block, a partial second
def test_gating_matches_formula(formula, gelu, rows, ffn, device):
    x = (np.random.default_rng(ffn).standard_normal((rows, 2 * ffn)) * 4).astype(np.float32)
    x[0, :4] = [-100.0, 100.0, -20.0, 0.0]  # saturating gates
    ours = gated(torch.from_numpy(x).to(device), gelu).cpu().numpy()
    expected = formula(x)
    assert np.abs(ours - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
