"""Causal grouped-query attention over a KV cache, with per-row results that do not depend on the call.

    out = cached_attention(q, k, v, scale)   # q (n_heads, T, D) f32; k, v (n_kv_heads, L, D) f32 or f16 -> out (T, n_heads*D)
    out = cached_attention(q, k, v, scale, window=4096)   # sliding-window attention (Gemma 3, Mistral)
    out = cached_attention(q, k, v, scale, sinks=sinks)   # sinks (n_heads,) f32: gpt-oss's attention sinks
    out = batched_attention(qkv, n_heads, caches, lengths, layer, scale, window, cos, sin, rope_dim, interleaved)
        # several sequences' RoPE, KV cache update and cached_attention in one call: the same bits as one by one

Query row i is the absolute position p = L - T + i and attends keys max(0, p - window + 1) .. p (all of 0 .. p when
`window` is None or 0): `window` keys counting its own, as in HF transformers (key j visible iff p - j < window) and
llama.cpp. Query head h reads kv head h // (n_heads // n_kv_heads). The output is already in the (T, n_heads * D)
layout the output projection takes.

A q8_0 cache passes k and v as uint8 (n_kv_heads, L, D / 32 * 34): per 32 values along D, one GGML Q8_0 block (an
f16 scale d and 32 int8 q, value = d * q; `quantize_q8_0_rows` writes them). The kernel dequantizes each block as
it reads it; d * q is exact in f32, so everything below holds for the dequantized values.

Why a kernel of our own: library attention (torch's scaled_dot_product_attention, batched BLAS products) blocks its work
by T, so a row's float result depends on how many rows share the call. The int8 activation quantization downstream turns
such last-bit differences into different tokens, so prefilling a prompt in one call and reusing a cached prefix gave
different greedy text. Here the output row of absolute position p is the same bits for any T and any thread count: each
(head, row) pair is computed whole by one thread, in an order fixed by p alone (csrc/attention.c): keys in chunks of 64
at fixed absolute offsets, from the chunk holding the row's first visible key (those below it in that chunk get weight
0; the chunks before it are skipped, which also makes long-context decode with a window cheaper); per chunk the f32
scores, their max, exp(score - running max) and its sum, then the value rows in key order (online softmax: the running
sum and output are rescaled when the max grows); with sinks, the head's sink logit joins the sum as one more term
(rescaled the same way); finally a division by the sum.
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

import numpy as np

from ..errors import RequestError
from ..quant.types import BLOCK_GEOMETRY, GGMLType
from . import _cpu
from .outputs import F32 as _F32, bad_array, bad_contiguous, heads_side_by_side, output_buffer

_Q8_0 = int(GGMLType.Q8_0)
_Q8_0_GEOMETRY = BLOCK_GEOMETRY[GGMLType.Q8_0]
QK, Q8_0_BYTES = _Q8_0_GEOMETRY.block_size, _Q8_0_GEOMETRY.type_size  # values per Q8_0 block (32); its bytes (34)
_U8 = np.dtype(np.uint8)
# dtype -> GGML type id, as the C core names them
_KV_TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, _U8: _Q8_0}
_attention = _cpu.attention  # looked up once: decode calls this once per layer per token
_quantize_q8_0 = _cpu.kv_quantize_q8_0


def _row_size(kv_type: int | None, d: int) -> int:
    """Elements per key/value row for head size d: d floats, or d / 32 Q8_0 blocks of bytes (-1: none fits)."""
    if kv_type != _Q8_0:
        return d
    return d // QK * Q8_0_BYTES if d % QK == 0 else -1


def _bad_input(q: object, k: object, v: object, scale: object, out: object, window: object,
               sinks: object = None) -> RequestError:
    """The first thing wrong with attention's arguments (only built on the failure path)."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray):
            return RequestError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.ndim != 3:
            return RequestError(f"{name} must be 3-d, got shape {a.shape}")
        if a.size and not _rows_of_whole_elements(a.strides, a.itemsize):
            return RequestError(f"{name} must have a contiguous last dimension and strides of whole elements, got "
                                f"strides {a.strides}; call np.ascontiguousarray first")
    if q.dtype != _F32:
        return RequestError(f"q must be float32, got {q.dtype}")
    if k.dtype not in _KV_TYPES or v.dtype != k.dtype:
        return RequestError(f"k and v must both be float32, float16 or uint8 (q8_0 blocks), got {k.dtype} and "
                            f"{v.dtype}")
    (h, t, d), (g, length, dk) = q.shape, k.shape
    row = _row_size(_KV_TYPES[k.dtype], d)
    if k.dtype == _U8 and row < 0:
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
        error = bad_array("out", out, 2) or bad_contiguous("out", out, (t, h * d), writeable=True)
        if error is not None:
            return error
    if window is not None and (type(window) is not int or window < 0):
        return RequestError(f"window must be None, 0 (no window) or a positive int of keys, got {window!r}")
    if sinks is not None and not _good_sinks(sinks, h):
        return RequestError(f"sinks must be None or a C-contiguous float32 array of shape ({h},), got "
                            f"{getattr(sinks, 'dtype', type(sinks).__name__)} {getattr(sinks, 'shape', '')}")
    return RequestError("bad arguments to attention")


def _good_sinks(sinks: object, n_heads: int) -> bool:
    """None, or one float32 logit per query head, contiguous (the kernel reads sinks[h])."""
    return sinks is None or (isinstance(sinks, np.ndarray) and sinks.dtype == _F32 and sinks.shape == (n_heads,)
                             and sinks.flags.c_contiguous)


def _rows_of_whole_elements(strides: tuple, itemsize: int) -> bool:
    """Byte strides (head, row, col) of a 3-d array the C core can take as strides in elements: a contiguous last
    dimension, the other two whole elements apart."""
    head, row, col = strides
    return col == itemsize and head % itemsize == 0 and row % itemsize == 0


def cached_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                     out: np.ndarray | None = None, window: int | None = None,
                     sinks: np.ndarray | None = None) -> np.ndarray:
    """Causal GQA of q (n_heads, T, D) over k, v (n_kv_heads, L, D); returns out (T, n_heads * D) float32.

    q float32; k and v both float32, both float16, or both uint8 Q8_0 rows (n_kv_heads, L, D / 32 * 34); numpy
    arrays with a contiguous last dimension (other strides free: cache views and transposed qkv views are fine).
    `window` > 0 limits each row to its `window` newest keys (sliding-window attention); None or 0: all keys. `sinks`
    (n_heads,) float32: a logit per head joining each row's softmax sum with no value (None: none). `out`,
    when given, must be C-contiguous and not overlap the inputs; it is returned.
    """
    # One fused check (numpy attribute reads cost ~50 ns each; decode makes one call per layer per token).
    try:
        h, t, d = q.shape
        g, length, dk = k.shape
        qs, ks, vs = q.strides, k.strides, v.strides
        kv_type = _KV_TYPES.get(k.dtype)
        size = k.itemsize
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
            # no rows: nothing is read (and numpy gives empty arrays strides of 0)
            and (t == 0 or _rows_of_whole_elements(qs, 4) and _rows_of_whole_elements(ks, size)
                 and _rows_of_whole_elements(vs, size))
            and isinstance(scale, (float, int))
            and type(keys) is int and keys >= 0
            and (sinks is None or _good_sinks(sinks, h))
        )
        result = output_buffer(ok, out, t, h * d)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_input(q, k, v, scale, out, window, sinks)
    if t:
        _attention(q, k, v, kv_type, h, g, t, length, d, float(scale), result, keys, sinks)  # strides: the views' own
    return result


def quantize_q8_0_rows(x: np.ndarray, out: np.ndarray) -> None:
    """Write x (heads, rows, D) float32 as Q8_0 blocks into out (heads, rows, D / 32 * 34) uint8, the same bytes as
    deeproots.quant's Q8_0 (ggml's reference quantizer). Both are numpy arrays and may be strided views with a
    contiguous last dimension, such as new keys and the cache rows they go to; out must be writeable."""
    try:  # one fused check, as in cached_attention: a q8_0 cache calls this twice per layer per token
        (heads, rows, d) = x.shape
        ok = (x.dtype == _F32 and out.dtype == _U8 and d % QK == 0
              and out.shape == (heads, rows, d // QK * Q8_0_BYTES) and out.flags.writeable
              and (heads * rows == 0 or _rows_of_whole_elements(x.strides, 4) and out.strides[2] == 1))  # none: no read
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RequestError(f"quantize_q8_0_rows needs x (heads, rows, D) float32 with D a multiple of {QK} and a "
                           f"writeable out (heads, rows, D / {QK} * {Q8_0_BYTES}) uint8, numpy arrays with a "
                           f"contiguous last dimension; got {getattr(x, 'dtype', type(x))} "
                           f"{tuple(getattr(x, 'shape', ()))} and {getattr(out, 'dtype', type(out))} "
                           f"{tuple(getattr(out, 'shape', ()))}")
    if heads and rows:
        _quantize_q8_0(x, out, heads, rows, d)


_attention_batch = _cpu.attention_batch
_plan: list = [None]  # the last step's plan: see _batch_plan


def _batch_plan(caches, lengths) -> tuple:
    """Descriptors of the caches of one forward step: built by the first layer, reused by the others (the caches'
    offsets only move after the last layer): (cache refs, offsets, lengths, desc, kv_type, n_layers, n_kv_heads,
    row, N, longest offset + T), desc (B, 2) int64 holding each sequence's row count and cache offset. Weak
    references: a plan keeps no cache alive."""
    plan = _plan[0]
    if plan is not None and plan[2] == lengths and plan[1] == tuple([cache.offset for cache in caches]) and \
            tuple([ref() for ref in plan[0]]) == caches:
        return plan
    first = caches[0]
    keys0 = first.keys
    n_layers, g, _, row = keys0.shape
    kv_type = _KV_TYPES.get(keys0.dtype)
    for cache, t in zip(caches, lengths):
        keys, values = cache.keys, cache.values
        if type(t) is not int or t < 0 or keys.dtype != keys0.dtype or values.dtype != keys0.dtype or \
                keys.shape[:2] != (n_layers, g) or keys.shape[3] != row or values.shape != keys.shape or \
                not _writeable_contiguous(keys) or not _writeable_contiguous(values):
            raise RequestError("attention_batch needs writeable C-contiguous caches of one kv type and shape, and row "
                               "counts >= 0")
        end = cache.offset + t
        if end > cache.max_tokens or end > keys.shape[2]:
            raise RequestError(f"the KV cache holds {cache.max_tokens} tokens; this step needs {end}")
    desc = np.array([(t, cache.offset) for cache, t in zip(caches, lengths)], dtype=np.int64).reshape(-1, 2)
    plan = (tuple([weakref.ref(cache) for cache in caches]), tuple([cache.offset for cache in caches]), tuple(lengths),
            desc, kv_type, n_layers, g, row, sum(lengths),
            max(cache.offset + t for cache, t in zip(caches, lengths)))
    _plan[0] = plan
    return plan


def _writeable_contiguous(a: np.ndarray) -> bool:
    flags = a.flags
    return flags.c_contiguous and flags.writeable


def batched_attention(qkv: np.ndarray, n_heads: int, caches, lengths, layer: int, scale: float,
                      window: int | None, cos: np.ndarray, sin: np.ndarray, rope_dim: int,
                      interleaved: bool, sinks: np.ndarray | None = None) -> np.ndarray:
    """One layer's attention for several sequences packed in qkv (N, n_heads + 2 n_kv_heads, D), a writeable float32
    numpy array (rows of any stride, heads side by side): sequence b owns the next lengths[b] rows and caches[b]
    (KVCache-like: keys, values, offset, max_tokens). Per sequence, exactly as its own calls would do: RoPE of its q and
    k heads in place (rotary_embedding_ from position offset), its keys and values stored at the cache offset
    (KVCache.update), then cached_attention of its q over the layer's keys 0 .. offset + T. Returns (N, n_heads * D);
    offsets do not move. Every row and every stored byte is the same as those calls give; the attention of all sequences
    runs as one dispatch over the kernels' threads."""
    caches, lengths = tuple(caches), tuple(lengths)
    desc, kv_type, n_layers, g, row, n, longest = _batch_plan(caches, lengths)[3:]
    try:
        t, heads, d = qkv.shape
        strides = qkv.strides
        positions, half = cos.shape
        ok = (
            kv_type is not None and qkv.dtype == _F32 and qkv.flags.writeable
            and heads_side_by_side(strides, t, heads, d)
            and t == n and heads == n_heads + 2 * g and 0 < g <= n_heads and n_heads % g == 0
            and row == _row_size(kv_type, d) and type(layer) is int and 0 <= layer < n_layers
            and isinstance(scale, (float, int)) and (window is None or (type(window) is int and window >= 0))
            and cos.dtype == _F32 and sin.dtype == _F32 and cos.flags.c_contiguous and sin.flags.c_contiguous
            and sin.shape == (positions, half) and type(rope_dim) is int and 0 < rope_dim <= d
            and rope_dim == 2 * half and longest <= positions and isinstance(interleaved, bool)
            and _good_sinks(sinks, n_heads)
        )
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise RequestError("batched_attention: qkv must be float32 (N, n_heads + 2 n_kv_heads, D) matching the "
                           "caches, with rope tables covering every position (and sinks None or (n_heads,) float32)")
    out = np.empty((n, n_heads * d), _F32)
    keys, values = tuple([cache.keys for cache in caches]), tuple([cache.values for cache in caches])
    _attention_batch(desc, keys, values, layer, qkv, n_heads, g, d, kv_type, float(scale), window or 0, out, cos, sin,
                     rope_dim, interleaved, sinks)
    return out
