"""Causal grouped-query attention over a KV cache, with per-row results that do not depend on the call.

    out = cached_attention(q, k, v, scale)   # q (n_heads, T, D) f32; k, v (n_kv_heads, L, D) f32 or f16 -> out (T, n_heads*D)

Query row i is the absolute position L - T + i and attends keys 0 .. L - T + i; query head h reads kv head
h // (n_heads // n_kv_heads). The output is already in the (T, n_heads * D) layout the output projection takes.

Why a kernel of our own: torch's scaled_dot_product_attention blocks its work by T, so a row's float result depends on
how many rows share the call. The int8 activation quantization downstream turns such last-bit differences into
different tokens, so prefilling a prompt in one call and reusing a cached prefix gave different greedy text. Here
the output row of absolute position p is the same bits for any T and any thread count: each (head, row) pair is
computed whole by one thread, in an order fixed by p alone (csrc/attention.c): keys in chunks of 64 at fixed
absolute offsets; per chunk the f32 scores, their max, exp(score - running max) and its sum, then the value rows in
key order (online softmax: the running sum and output are rescaled when the max grows); finally a division by the sum.
The row order is fixed per build: AVX-512, AVX2 and portable-C builds may differ from each other in the last bits.

Error bound, per output element d of a row with n keys, against exact arithmetic on the same f32 (or f16) inputs,
with u = 2^-24, p_j the exact softmax weights and gamma_m = m u / (1 - m u):
    |out_d - exact_d| <= 2.02 Delta * sum_j p_j |v_jd| + (3 n + 24) u * max_j |v_jd|
    Delta = max_j gamma_{D+2} * |scale| * sum_i |q_i k_ji|   (the f32 error of a score; the bound assumes Delta <= 0.01)
The first term is the scores' error carried through the softmax (weights off by factors within e^(+-2 Delta)); the
second covers exp (relative error below 2u; its argument's rounding, u |x| e^-x <= u / e per key), the f32 sums of
weights and of weighted values, and the final division.

Threads: (head, row) pairs are dealt round-robin to up to `set_num_threads` threads of the kernels' pool (small calls
stay on the calling thread). The GIL is released while the kernel runs.
"""

import torch

from ..errors import RequestError
from . import _cpu
from .outputs import F32 as _F32, output_buffer

_KV_TYPES = {torch.float32: 0, torch.float16: 1}  # dtype -> GGML type id, as the C core names them
_attention = _cpu.attention  # looked up once: decode calls this once per layer per token


def _bad_input(q: object, k: object, v: object, scale: object, out: object) -> RequestError:
    """The first thing wrong with attention's arguments (only built on the failure path)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return RequestError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.device.type != "cpu":
            return RequestError(f"{name} must be a 3-d CPU tensor, got shape {tuple(t.shape)} on {t.device}")
        if t.stride(2) != 1:
            return RequestError(f"{name} must have a contiguous last dimension; call .contiguous() first")
    if q.dtype != _F32:
        return RequestError(f"q must be float32, got {q.dtype}")
    if k.dtype not in _KV_TYPES or v.dtype != k.dtype:
        return RequestError(f"k and v must both be float32 or both float16, got {k.dtype} and {v.dtype}")
    (h, t, d), (g, length, dk) = q.shape, k.shape
    if v.shape != k.shape or dk != d or d == 0:
        return RequestError(f"k and v must have shape (n_kv_heads, L, {d}) with D > 0, got {tuple(k.shape)} "
                            f"and {tuple(v.shape)}")
    if g == 0 or h % g:
        return RequestError(f"n_heads ({h}) must be a multiple of n_kv_heads ({g})")
    if t > length:
        return RequestError(f"q holds the {t} newest positions but k and v only {length}")
    if not isinstance(scale, (float, int)):
        return RequestError(f"scale must be a float, got {type(scale).__name__}")
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.dtype != _F32 or out.device.type != "cpu":
            return RequestError("out must be a float32 CPU tensor")
        if out.shape != (t, h * d) or not out.is_contiguous():
            return RequestError(f"out must be contiguous with shape ({t}, {h * d}), got {tuple(out.shape)}")
    return RequestError("bad arguments to attention")


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal GQA of q (n_heads, T, D) over k, v (n_kv_heads, L, D); returns out (T, n_heads * D) float32.

    q float32, k and v both float32 or both float16, all on the CPU with a contiguous last dimension (other strides
    free: cache views are fine). `out`, when given, must be contiguous and not overlap the inputs; it is returned.
    """
    # One fused check (torch attribute reads cost ~100 ns each; decode makes one call per layer per token).
    try:
        h, t, d = q.shape
        g, length, dk = k.shape
        qs, ks, vs = q.stride(), k.stride(), v.stride()
        kv_type = _KV_TYPES.get(k.dtype)
        ok = (
            kv_type is not None
            and q.dtype == _F32
            and v.dtype == k.dtype
            and v.shape == k.shape
            and dk == d > 0
            and 0 < g <= h
            and h % g == 0
            and t <= length
            and qs[2] == ks[2] == vs[2] == 1
            and q.is_cpu and k.is_cpu and v.is_cpu
            and isinstance(scale, (float, int))
        )
        result = output_buffer(ok, out, t, h * d)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_input(q, k, v, scale, out)
    if t:
        _attention(q.data_ptr(), qs[0], qs[1], k.data_ptr(), ks[0], ks[1], v.data_ptr(), vs[0], vs[1], kv_type,
                   h, g, t, length, d, float(scale), result.data_ptr())
    return result
