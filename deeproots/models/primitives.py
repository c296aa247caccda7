"""The primitives a model's forward pass is made of, in two interchangeable sets.

REFERENCE is plain PyTorch (layers.py): slow, obviously correct, compared against transformers.
FAST is the compiled core (kernels/): each call computes a row the same way whatever else is in
the call, and costs about a microsecond at decode sizes instead of one PyTorch dispatch per op.
GELU gating (Gemma) runs in PyTorch on both paths: three ops per layer, too few to earn a kernel yet.
The model code is written once against this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import kernels
from .layers import RotaryEmbedding, causal_attention, gelu_mul, rms_norm, silu_mul


@dataclass(frozen=True)
class Primitives:
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x (T, d), weight (d,), eps) -> (T, d)
    rotate_: Callable[[RotaryEmbedding, torch.Tensor, int], None]  # (rope, x (T, heads, D), start), in place
    # (q (n_heads, T, D), k, v (n_kv_heads, L, D), scale, window=None) -> (T, n_heads * D)
    attention: Callable[..., torch.Tensor]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]  # (T, 2F) [gate | up] -> (T, F)
    gelu_mul: Callable[[torch.Tensor], torch.Tensor]  # (T, 2F) [gate | up] -> (T, F)


def _rotate_fast(rope: RotaryEmbedding, x: torch.Tensor, start: int) -> None:
    kernels.rotary_embedding_(x, rope.cos, rope.sin, start, rope.rope_dim, rope.style == "interleaved")


REFERENCE = Primitives(rms_norm=rms_norm, rotate_=RotaryEmbedding.rotate_, attention=causal_attention,
                       silu_mul=silu_mul, gelu_mul=gelu_mul)
FAST = Primitives(rms_norm=kernels.rms_norm, rotate_=_rotate_fast, attention=kernels.cached_attention,
                  silu_mul=kernels.silu_mul, gelu_mul=gelu_mul)
