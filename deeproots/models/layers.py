"""Building blocks shared by every architecture: norms, rotary embeddings, attention, MLPs.

Activations of one sequence are (T, d_model); attention works per head as (n_heads, T, head_dim).
These are the reference forms (plain PyTorch); primitives.py pairs each with its compiled kernel.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..cache.kv import dequantize_rows
from ..errors import RequestError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., d) scaled to unit root-mean-square, then by `weight` (d,)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RotaryEmbedding:
    """RoPE with tables precomputed for every position the cache can hold.

    GGUF files converted from HF llama checkpoints have Q/K rows permuted so that rotation pairs
    are adjacent dimensions ("interleaved", llama.cpp's ROPE_TYPE_NORM); other architectures keep
    HF's layout, where dimension i pairs with i + rope_dim/2 ("neox").
    """

    def __init__(self, rope_dim: int, theta: float, max_positions: int, *, scale: float = 1.0,
                 style: Literal["interleaved", "neox"] = "interleaved"):
        self.rope_dim = rope_dim
        self.style = style
        inv_freq = 1.0 / theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)  # (rope_dim/2,)
        positions = torch.arange(max_positions, dtype=torch.float64) / scale
        angles = torch.outer(positions, inv_freq)  # (max_positions, rope_dim/2)
        self.cos = angles.cos().float()
        self.sin = angles.sin().float()

    def rotate_(self, x: torch.Tensor, start: int) -> None:
        """Rotate x (T, n_heads, head_dim) in place; row t holds position start + t."""
        T = x.shape[0]
        cos = self.cos[start:start + T, None]  # (T, 1, rope_dim/2)
        sin = self.sin[start:start + T, None]
        rotated = x[..., :self.rope_dim]
        if self.style == "interleaved":
            first, second = rotated[..., 0::2], rotated[..., 1::2]
        else:
            first, second = rotated.chunk(2, dim=-1)
        out_first = first * cos - second * sin
        out_second = first * sin + second * cos
        if self.style == "interleaved":
            rotated.copy_(torch.stack((out_first, out_second), dim=-1).flatten(-2))
        else:
            rotated.copy_(torch.cat((out_first, out_second), dim=-1))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     window: int | None = None) -> torch.Tensor:
    """Grouped-query attention of the T newest positions over all L cached ones (reference: torch SDPA).

    q (n_heads, T, D); k, v (n_kv_heads, L, D) with L >= T; the queries are the last T positions.
    `window` > 0 is sliding-window attention: position p sees only keys p - window < j <= p (None or 0:
    all keys). A q8_0 cache's uint8 rows are read dequantized. Returns (T, n_heads * D), the layout the
    output projection takes. The fast path uses kernels.cached_attention, which has the same signature
    and is tested against this.
    """
    if window is not None and (type(window) is not int or window < 0):
        raise RequestError(f"window must be None, 0 (no window) or a positive int of keys, got {window!r}")
    T, L = q.shape[1], k.shape[1]
    mask = None  # without a window, the newest token sees everything
    if T > 1 or window:
        # Query i sits at absolute position L - T + i and may see keys 0 .. L - T + i, the last `window` of them.
        mask = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)  # (T, L)
        if window:
            mask = mask.triu(diagonal=L - T - window + 1)
    if k.dtype == torch.uint8:
        k, v = dequantize_rows(k), dequantize_rows(v)
    k, v = k.to(q.dtype), v.to(q.dtype)  # a float16 cache is read in float32
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return attended.transpose(0, 1).reshape(T, -1)  # (T, n_heads * D)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up (T, 2 * ffn_dim) holding [gate | up] side by side -> (T, ffn_dim)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gelu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gelu(gate) * up (tanh approximation, as Gemma) for gate_up (T, 2 * ffn_dim) -> (T, ffn_dim)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.gelu(gate, approximate="tanh") * up
