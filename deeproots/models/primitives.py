"""The primitives a model's forward pass is made of, in two interchangeable sets.

REFERENCE is plain numpy (layers.py): slow, obviously correct, compared against transformers.
FAST is the compiled core (kernels/): each call computes a row the same way whatever else is in
the call, and costs about a microsecond at decode sizes instead of several numpy operations.
GELU gating (Gemma) runs in numpy on both paths: a few ops per layer, too few to earn a kernel yet.
The model code is written once against this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import kernels
from ..kernels.attention import batched_attention
from .layers import RotaryEmbedding, causal_attention, gelu_mul, rms_norm, silu_mul


@dataclass(frozen=True)
class Primitives:
    rms_norm: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (x (T, d), weight (d,), eps) -> (T, d)
    rotate_: Callable[[RotaryEmbedding, np.ndarray, int], None]  # (rope, x (T, heads, D), start), in place
    # (q (n_heads, T, D), k, v (n_kv_heads, L, D), scale, window=None) -> (T, n_heads * D)
    attention: Callable[..., np.ndarray]
    silu_mul: Callable[[np.ndarray], np.ndarray]  # (T, 2F) [gate | up] -> (T, F)
    gelu_mul: Callable[[np.ndarray], np.ndarray]  # (T, 2F) [gate | up] -> (T, F)
    # One layer's RoPE, cache update and attention for sequences packed in qkv (N, n_heads + 2 n_kv_heads, D):
    # (rope, qkv, n_heads, caches, lengths, layer, scale, window) -> (N, n_heads * D); caches' offsets do not move
    attend_sequences: Callable[..., np.ndarray]


def per_sequence(rotate_: Callable, attention: Callable) -> Callable[..., np.ndarray]:
    """attend_sequences as a loop over the sequences: RoPE, cache update, attention, one sequence after another."""
    def attend_sequences(rope: RotaryEmbedding, qkv: np.ndarray, n_heads: int, caches, lengths, layer: int,
                         scale: float, window: int | None) -> np.ndarray:
        n_kv = (qkv.shape[1] - n_heads) // 2
        outputs, start = [], 0
        for cache, T in zip(caches, lengths):
            rows = qkv[start:start + T]
            rotate_(rope, rows[:, :n_heads + n_kv], cache.offset)  # q and k, in place
            q = rows[:, :n_heads].swapaxes(0, 1)  # (n_heads, T, head_dim)
            keys, values = cache.update(layer, rows[:, n_heads:n_heads + n_kv].swapaxes(0, 1),
                                        rows[:, n_heads + n_kv:].swapaxes(0, 1))  # (n_kv_heads, L, head_dim)
            outputs.append(attention(q, keys, values, scale, window=window))  # (T, n_heads * D)
            start += T
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
    return attend_sequences


def _rotate_fast(rope: RotaryEmbedding, x: np.ndarray, start: int) -> None:
    kernels.rotary_embedding_(x, rope.cos, rope.sin, start, rope.rope_dim, rope.style == "interleaved")


_attend_each_fast = per_sequence(_rotate_fast, kernels.cached_attention)


def _attend_sequences_fast(rope: RotaryEmbedding, qkv: np.ndarray, n_heads: int, caches, lengths, layer: int,
                           scale: float, window: int | None) -> np.ndarray:
    """One sequence: the loop. Several: one compiled call doing what the loop does, the same bits
    (kernels.attention.batched_attention), without a dozen Python-level calls per sequence and layer."""
    if len(caches) == 1:
        return _attend_each_fast(rope, qkv, n_heads, caches, lengths, layer, scale, window)
    return batched_attention(qkv, n_heads, caches, lengths, layer, scale, window, rope.cos, rope.sin, rope.rope_dim,
                             rope.style == "interleaved")


REFERENCE = Primitives(rms_norm=rms_norm, rotate_=RotaryEmbedding.rotate_, attention=causal_attention,
                       silu_mul=silu_mul, gelu_mul=gelu_mul,
                       attend_sequences=per_sequence(RotaryEmbedding.rotate_, causal_attention))
FAST = Primitives(rms_norm=kernels.rms_norm, rotate_=_rotate_fast, attention=kernels.cached_attention,
                  silu_mul=kernels.silu_mul, gelu_mul=gelu_mul, attend_sequences=_attend_sequences_fast)
