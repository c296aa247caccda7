"""Decode attention over the device KV cache: one query position per sequence, every cached key, in one pass.

One program per query head reads its KV head's keys and values in BLOCK_L chunks with an online softmax (running
max and sum), so the (L,) scores are never stored. A sliding window keeps keys p - window < j <= p, the query at
p = L - 1; the keys before it are not read at all. L is read from a device tensor, so the launch does not change
as the cache grows (a captured CUDA graph replays over the longer cache). A q8_0 cache's rows (per 32 values an
f16 scale and 32 int8) are dequantized as they are read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...quant import GGMLType
from .blocks import geometry, load_f16

BLOCK_L = 64
QK, Q8_0_BYTES = geometry(GGMLType.Q8_0)  # a Q8_0 block: 32 values in 34 bytes


@triton.jit
def _load_rows(ptr, rows, dims, mask, Q8: tl.constexpr):
    """Rows at byte/element offsets rows (BLOCK_L, 1), columns dims (BLOCK_D,) -> (BLOCK_L, BLOCK_D) float32."""
    if Q8:
        block = (dims // QK) * Q8_0_BYTES
        q = tl.load(ptr + rows + (block + 2 + dims % QK)[None, :], mask=mask, other=0).to(tl.int8, bitcast=True)
        values = q.to(tl.float32) * load_f16(ptr, rows + block[None, :], mask)
    else:
        values = tl.load(ptr + rows + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    return values


@triton.jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, length_ptr, window, group, stride_kh, stride_kl, scale,
                             D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, Q8: tl.constexpr,
                             WINDOW: tl.constexpr):
    head = tl.program_id(0)
    L = tl.load(length_ptr).to(tl.int32)
    if WINDOW:
        first = tl.maximum(L - window, 0)
    else:
        first = 0
    kv_head = head // group
    dims = tl.arange(0, BLOCK_D)
    d_mask = dims < D
    q = tl.load(q_ptr + head * D + dims, mask=d_mask, other=0.0) * scale  # (BLOCK_D,)
    running_max = tl.full((), float("-inf"), tl.float32)
    running_sum = tl.zeros((), dtype=tl.float32)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(first, L, BLOCK_L):
        keys = start + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
        k_mask = keys < L
        rows = kv_head.to(tl.int64) * stride_kh + keys.to(tl.int64)[:, None] * stride_kl  # (BLOCK_L, 1)
        mask = k_mask[:, None] & d_mask[None, :]
        k = _load_rows(k_ptr, rows, dims, mask, Q8)  # (BLOCK_L, BLOCK_D)
        scores = tl.where(k_mask, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_L,)
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        correction = tl.exp(running_max - new_max)
        p = tl.exp(scores - new_max)
        v = _load_rows(v_ptr, rows, dims, mask, Q8)
        acc = acc * correction + tl.sum(p[:, None] * v, axis=0)
        running_sum = running_sum * correction + tl.sum(p, axis=0)
        running_max = new_max
    tl.store(out_ptr + head * D + dims, acc / running_sum, mask=d_mask)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None = None,
                     length: torch.Tensor | None = None) -> torch.Tensor:
    """q (n_heads, 1, D) float32; k, v (n_kv_heads, L, D) float16/float32, or (n_kv_heads, L, D / 32 * 34) uint8
    q8_0 rows (a cache's views: rows contiguous) -> (1, n_heads * D), as formulas.causal_attention for T = 1 over
    the first `length` (a (1,) int tensor on the device; default: all L) keys."""
    n_heads, _, D = q.shape
    n_kv, L = k.shape[:2]
    if length is None:
        length = torch.full((1,), L, dtype=torch.int32, device=q.device)
    if k.stride(2) != 1 or v.stride() != k.stride():
        k, v = k.contiguous(), v.contiguous()
    out = torch.empty((1, n_heads * D), dtype=torch.float32, device=q.device)
    _decode_attention_kernel[(n_heads,)](q.contiguous(), k, v, out, length, window or 0, n_heads // n_kv, k.stride(0),
                                         k.stride(1), scale, D=D, BLOCK_D=triton.next_power_of_2(D), BLOCK_L=BLOCK_L,
                                         Q8=k.dtype == torch.uint8, WINDOW=bool(window))
    return out
