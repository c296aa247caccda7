"""RoPE in place over a strided view of q and k heads: one program per (row, head), one launch per layer instead of
torch's slicing, four products, two sums and two copies. Each row's position is read from a device tensor, so the
rows of several sequences rotate in one launch and a captured CUDA graph replays at new positions."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...errors import InternalError


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, positions_ptr, stride_t, stride_h, HALF: tl.constexpr,
                 BLOCK: tl.constexpr, INTERLEAVED: tl.constexpr):
    t = tl.program_id(0)
    position = tl.load(positions_ptr + t).to(tl.int64)
    head = tl.program_id(1)
    pairs = tl.arange(0, BLOCK)
    mask = pairs < HALF
    row = x_ptr + t.to(tl.int64) * stride_t + head * stride_h
    if INTERLEAVED:  # llama GGUF files: dimension 2i pairs with 2i + 1
        first, second = 2 * pairs, 2 * pairs + 1
    else:  # HF's layout ("neox"): dimension i pairs with i + rope_dim / 2
        first, second = pairs, pairs + HALF
    a = tl.load(row + first, mask=mask, other=0.0)
    b = tl.load(row + second, mask=mask, other=0.0)
    cos = tl.load(cos_ptr + position * HALF + pairs, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + position * HALF + pairs, mask=mask, other=0.0)
    tl.store(row + first, a * cos - b * sin, mask=mask)
    tl.store(row + second, a * sin + b * cos, mask=mask)


def rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, rope_dim: int,
            interleaved: bool) -> None:
    """Rotate the first rope_dim dimensions of x (T, heads, head_dim) float32 in place (a view whose head_dim is
    contiguous, e.g. q and k of a qkv row); row t holds position positions[t] (T,) int64 on x's device; cos/sin
    (max positions, rope_dim / 2)."""
    T, heads, _ = x.shape
    if x.stride(2) != 1 or x.dtype != torch.float32:
        raise InternalError(f"rotate_ needs a float32 view with contiguous head dimensions, got {x.dtype} with strides "
                            f"{x.stride()}")
    if T and heads:
        half = rope_dim // 2
        _rope_kernel[(T, heads)](x, cos, sin, positions, x.stride(0), x.stride(1), HALF=half,
                                 BLOCK=triton.next_power_of_2(half), INTERLEAVED=interleaved)
