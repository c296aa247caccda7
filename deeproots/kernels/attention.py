"""Causal grouped-query attention over a KV cache, with per-row results that do not depend on the call.

    out = cached_attention(q, k, v, scale)   # q (n_heads, T, D) f32; k, v (n_kv_heads, L, D) f32 or f16 -> out (T, n_heads*D)
    out = cached_attention(q, k, v, scale, window=4096)   # sliding-window attention (Gemma 3, Mistral)
    out = batched_attention(qkv, n_heads, caches, lengths, layer, scale, window, cos, sin, rope_dim, interleaved)
        # several sequences' RoPE, KV cache update and cached_attention in one call: the same bits as one by one

Query row i is the absolute position p = L - T + i and attends keys max(0, p - window + 1) .. p (all of 0 .. p when
`window` is None or 0): `window` keys counting its own, as in HF transformers (key j visible iff p - j < window) and
llama.cpp. Query head h reads kv head h // (n_heads // n_kv_heads). The output is already in the (T, n_heads * D)
layout the output projection takes.

A q8_0 cache passes k and v as uint8 (n_kv_heads, L, D / 32 * 34): per 32 values along D, one GGML Q8_0 block (an
f16 scale d and 32 int8 q, value = d * q; `quantize_q8_0_rows` writes them). The kernel dequantizes each block as
it reads it; d * q is exact in f32, so everything below holds for the dequantized values.

Why a kernel of our own: torch's scaled_dot_product_attention blocks its work by T, so a row's float result depends on
how many rows share the call. The int8 activation quantization downstream turns such last-bit differences into
different tokens, so prefilling a prompt in one call and reusing a cached prefix gave different greedy text. Here
the output row of absolute position p is the same bits for any T and any thread count: each (head, row) pair is
computed whole by one thread, in an order fixed by p alone (csrc/attention.c): keys in chunks of 64 at fixed
absolute offsets, from the chunk holding the row's first visible key (those below it in that chunk get weight 0;
the chunks before it are skipped, which also makes long-context decode with a window cheaper); per chunk the f32
scores, their max, exp(score - running max) and its sum, then the value rows in key order (online softmax: the
running sum and output are rescaled when the max grows); finally a division by the sum.
The row order is fixed per build: AVX-512, AVX2 and portable-C builds may differ from each other in the last bits.

Error bound, per output element d of a row with n visible keys, against exact arithmetic on the same f32 (or f16,
or dequantized q8_0) inputs, with u = 2^-24, p_j the exact softmax weights and gamma_m = m u / (1 - m u):
    |out_d - exact_d| <= 2.02 Delta * sum_j p_j |v_jd| + (3 n + 24) u * max_j |v_jd|
    Delta = max_j gamma_{D+2} * |scale| * sum_i |q_i k_ji|   (the f32 error of a score; the bound assumes Delta <= 0.01)
The first term is the scores' error carried through the softmax (weights off by factors within e^(+-2 Delta)); the
second covers exp (relative error below 2u; its argument's rounding, u |x| e^-x <= u / e per key), the f32 sums of
weights and of weighted values (the masked keys' zero weights add nothing), and the final division.

Threads: (head, row) pairs are dealt round-robin to up to `set_num_threads` threads of the kernels' pool (small calls
stay on the calling thread). The GIL is released while the kernel runs.
"""

import weakref

import torch

from ..errors import RequestError
from . import _cpu
from .outputs import F32 as _F32, output_buffer

_Q8_0 = 8  # GGML's type id for Q8_0
QK, Q8_0_BYTES = 32, 2 + 32  # values per Q8_0 block; its bytes: an f16 scale, then 32 int8
_KV_TYPES = {torch.float32: 0, torch.float16: 1, torch.uint8: _Q8_0}  # dtype -> GGML type id, as the C core names them
_attention = _cpu.attention  # looked up once: decode calls this once per layer per token
_quantize_q8_0 = _cpu.kv_quantize_q8_0


def _row_size(kv_type: int | None, d: int) -> int:
    """Elements per key/value row for head size d: d floats, or d / 32 Q8_0 blocks of bytes (-1: none fits)."""
    if kv_type != _Q8_0:
        return d
    return d // QK * Q8_0_BYTES if d % QK == 0 else -1


def _bad_input(q: object, k: object, v: object, scale: object, out: object, window: object) -> RequestError:
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
        return RequestError(f"k and v must both be float32, float16 or uint8 (q8_0 blocks), got {k.dtype} and "
                            f"{v.dtype}")
    (h, t, d), (g, length, dk) = q.shape, k.shape
    row = _row_size(_KV_TYPES[k.dtype], d)
    if k.dtype == torch.uint8 and row < 0:
        return RequestError(f"a q8_0 cache needs a head size that is a multiple of {QK}, got {d}")
    if v.shape != k.shape or dk != row or d == 0:
        return RequestError(f"k and v must have shape (n_kv_heads, L, {row}) with D > 0, got {tuple(k.shape)} "
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
    if window is not None and (type(window) is not int or window < 0):
        return RequestError(f"window must be None, 0 (no window) or a positive int of keys, got {window!r}")
    return RequestError("bad arguments to attention")


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     out: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """Causal GQA of q (n_heads, T, D) over k, v (n_kv_heads, L, D); returns out (T, n_heads * D) float32.

    q float32; k and v both float32, both float16, or both uint8 Q8_0 rows (n_kv_heads, L, D / 32 * 34); all on the
    CPU with a contiguous last dimension (other strides free: cache views are fine). `window` > 0 limits each row to
    its `window` newest keys (sliding-window attention); None or 0: all keys. `out`, when given, must be contiguous
    and not overlap the inputs; it is returned.
    """
    # One fused check (torch attribute reads cost ~100 ns each; decode makes one call per layer per token).
    try:
        h, t, d = q.shape
        g, length, dk = k.shape
        qs, ks, vs = q.stride(), k.stride(), v.stride()
        kv_type = _KV_TYPES.get(k.dtype)
        keys = 0 if window is None else window
        ok = (
            kv_type is not None
            and q.dtype == _F32
            and v.dtype == k.dtype
            and v.shape == k.shape
            and d > 0
            and dk == _row_size(kv_type, d)
            and 0 < g <= h
            and h % g == 0
            and t <= length
            and qs[2] == ks[2] == vs[2] == 1
            and q.is_cpu and k.is_cpu and v.is_cpu
            and isinstance(scale, (float, int))
            and type(keys) is int and keys >= 0
        )
        result = output_buffer(ok, out, t, h * d)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_input(q, k, v, scale, out, window)
    if t:
        _attention(q.data_ptr(), qs[0], qs[1], k.data_ptr(), ks[0], ks[1], v.data_ptr(), vs[0], vs[1], kv_type,
                   h, g, t, length, d, float(scale), result.data_ptr(), keys)
    return result


def quantize_q8_0_rows(x: torch.Tensor, out: torch.Tensor) -> None:
    """Write x (heads, rows, D) float32 as Q8_0 blocks into out (heads, rows, D / 32 * 34) uint8, the same bytes as
    deeproots.quant's Q8_0 (ggml's reference quantizer). Both may be strided views with a contiguous last dimension,
    such as new keys and the cache rows they go to."""
    try:  # one fused check, as in cached_attention: a q8_0 cache calls this twice per layer per token
        (heads, rows, d), xs, os = x.shape, x.stride(), out.stride()
        ok = (x.dtype == _F32 and out.dtype == torch.uint8 and d % QK == 0
              and out.shape == (heads, rows, d // QK * Q8_0_BYTES) and xs[2] == os[2] == 1 and x.is_cpu and out.is_cpu)
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RequestError(f"quantize_q8_0_rows needs x (heads, rows, D) float32 with D a multiple of {QK} and out "
                           f"(heads, rows, D / {QK} * {Q8_0_BYTES}) uint8, both on the CPU with a contiguous last "
                           f"dimension; got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))} and "
                           f"{getattr(out, 'dtype', type(out))} {tuple(getattr(out, 'shape', ()))}")
    if heads and rows:
        _quantize_q8_0(x.data_ptr(), xs[0], xs[1], out.data_ptr(), os[0], os[1], heads, rows, d)


_attention_batch = _cpu.attention_batch
_BATCH_FIELDS = 8  # per sequence: first row, T, offset, key and value base pointers, layer, head and row strides
_plan: list = [None]  # the last step's plan: see _batch_plan


def _batch_plan(caches, lengths) -> tuple:
    """Descriptors of the caches of one forward step: built by the first layer, reused by the others (the caches'
    offsets only move after the last layer): (cache refs, offsets, lengths, desc, kv_type, n_layers, n_kv_heads,
    row, N, longest offset + T). Weak references: a plan keeps no cache alive."""
    plan = _plan[0]
    if plan is not None and plan[2] == lengths and plan[1] == tuple([cache.offset for cache in caches]) and \
            tuple([ref() for ref in plan[0]]) == caches:
        return plan
    first = caches[0]
    keys0 = first.keys
    n_layers, g, _, row = keys0.shape
    kv_type = _KV_TYPES.get(keys0.dtype)
    desc, start = [], 0
    for cache, t in zip(caches, lengths):
        keys, values = cache.keys, cache.values
        if type(t) is not int or t < 0 or keys.dtype != keys0.dtype or values.dtype != keys0.dtype or \
                keys.shape[:2] != (n_layers, g) or keys.shape[3] != row or values.shape != keys.shape or \
                not keys.is_contiguous() or not values.is_contiguous() or not keys.is_cpu:
            raise RequestError("attention_batch needs caches of one kv type and shape, and row counts >= 0")
        end = cache.offset + t
        if end > cache.max_tokens or end > keys.shape[2]:
            raise RequestError(f"the KV cache holds {cache.max_tokens} tokens; this step needs {end}")
        desc.append((start, t, cache.offset, keys.data_ptr(), values.data_ptr(), *keys.stride()[:3]))
        start += t
    plan = (tuple([weakref.ref(cache) for cache in caches]), tuple([cache.offset for cache in caches]), tuple(lengths),
            torch.tensor(desc, dtype=torch.int64), kv_type, n_layers, g, row, start,
            max(cache.offset + t for cache, t in zip(caches, lengths)))
    _plan[0] = plan
    return plan


def batched_attention(qkv: torch.Tensor, n_heads: int, caches, lengths, layer: int, scale: float,
                      window: int | None, cos: torch.Tensor, sin: torch.Tensor, rope_dim: int,
                      interleaved: bool) -> torch.Tensor:
    """One layer's attention for several sequences packed in qkv (N, n_heads + 2 n_kv_heads, D) float32 (rows of
    any stride, heads side by side): sequence b owns the next lengths[b] rows and caches[b] (KVCache-like: keys,
    values, offset, max_tokens). Per sequence, exactly as its own calls would do: RoPE of its q and k heads in place
    (rotary_embedding_ from position offset), its keys and values stored at the cache offset (KVCache.update), then
    cached_attention of its q over the layer's keys 0 .. offset + T. Returns (N, n_heads * D); offsets do not move.
    Every row and every stored byte is the same as those calls give; the attention of all sequences runs as one
    dispatch over the kernels' threads."""
    caches, lengths = tuple(caches), tuple(lengths)
    desc, kv_type, n_layers, g, row, n, longest = _batch_plan(caches, lengths)[3:]
    try:
        t, heads, d = qkv.shape
        rs, hs, cs = qkv.stride()
        positions, half = cos.shape
        ok = (
            kv_type is not None and qkv.dtype == _F32 and qkv.is_cpu and cs == 1 and hs == d and rs >= heads * d
            and t == n and heads == n_heads + 2 * g and 0 < g <= n_heads and n_heads % g == 0
            and row == _row_size(kv_type, d) and type(layer) is int and 0 <= layer < n_layers
            and isinstance(scale, (float, int)) and (window is None or (type(window) is int and window >= 0))
            and cos.dtype == _F32 and sin.dtype == _F32 and cos.is_contiguous() and sin.is_contiguous()
            and sin.shape == (positions, half) and type(rope_dim) is int and 0 < rope_dim <= d
            and rope_dim == 2 * half and longest <= positions and isinstance(interleaved, bool)
        )
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RequestError("batched_attention: qkv must be float32 (N, n_heads + 2 n_kv_heads, D) matching the "
                           "caches, with rope tables covering every position")
    out = torch.empty(n, n_heads * d, dtype=_F32)
    _attention_batch(desc.data_ptr(), len(caches), layer, qkv.data_ptr(), rs, n_heads, g, d, kv_type, float(scale),
                     window or 0, out.data_ptr(), cos.data_ptr(), sin.data_ptr(), rope_dim, interleaved)
    return out
