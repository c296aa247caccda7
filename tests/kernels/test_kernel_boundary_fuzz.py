"""The trust boundary of the compiled core: every entry point of deeproots.kernels._cpu, called directly (no Python
wrapper in between), refuses a wrong call with InternalError and never crashes or touches memory it was not given.

Hypothesis draws small shapes, builds a valid call for each entry point, then breaks one argument: an array of the
wrong dtype or length, a strided view where a contiguous one is needed, a non-contiguous last dimension, a read-only
or self-overlapping output, an int (an address, as the old interface took) or None in place of an array, a size off
by one, negative or past any bound, a non-int. Each broken call must raise InternalError; the valid call must still
run, and on a few shapes give numpy's (or gguf's) values.
"""

import sys
from dataclasses import dataclass

import gguf.quants
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from deeproots.errors import InternalError, RequestError
from deeproots.kernels import _cpu, get_num_threads, set_num_threads

F32, F16, U8, I64 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8), np.dtype(np.int64)
T_F32, T_Q8_0 = 0, 8
BIG = [-1, -(2**63) - 1, 2**31, 2**40 + 1, 2**63, 2**64]  # negative, past a C int, past any size bound, past int64
NOT_INTS = [1.0, None, "3", np.int64(3), np.zeros(1, np.int64)]
NOT_FLOATS = [None, "0.5", np.zeros(1, np.float32)]
FUZZ = settings(max_examples=40, deadline=None, database=None)  # a few seconds in all


@dataclass
class Arg:
    """How an argument of a valid call may be broken: `kind` is in (contiguous read), out (contiguous write), sin /
    sout (strided read / write: exact shape, contiguous last dimension), size (any other value is wrong), free (only
    `bad` values are wrong), float, caches (a tuple of 4-d cache arrays, written), weights (a tuple of contiguous
    byte arrays, read), optional in (as in, or None), none (None, the one valid value: `bad` are wrong)."""

    kind: str
    bad: tuple = ()


def rng_for(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def strided(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """A view of a's values with every row along `axis` followed by a gap: same shape, not contiguous."""
    shape = list(a.shape)
    shape[axis] *= 2
    base = np.zeros(shape, a.dtype)
    index = [slice(None)] * a.ndim
    index[axis] = slice(None, None, 2)
    view = base[tuple(index)]
    view[...] = a
    return view


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


# ---- valid calls: (args, how each may be broken), from a few drawn sizes ----

def linear_call(rng, t: int, k: int, n: int):
    w = randn(rng, n, k)
    args = [T_F32, w.view(U8).reshape(-1), n, k, randn(rng, t, k), t, np.zeros((t, n), F32)]
    kinds = [Arg("free", (-1, 7, 256, 2**31)), Arg("in"), Arg("size"), Arg("size"), Arg("in"), Arg("size"),
             Arg("out")]
    return args, kinds


def linear_experts_call(rng, rows: list[int], k: int, n: int):
    """One F32 weight (n, k) per expert; expert j takes the next rows[j] rows of x."""
    ws = tuple(randn(rng, n, k).view(U8).reshape(-1) for _ in rows)
    m = sum(rows)
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(I64)
    args = [T_F32, ws, n, k, randn(rng, m, k), starts, np.zeros((m, n), F32), None]
    kinds = [Arg("free", (-1, 7, 256, 2**31)), Arg("weights"), Arg("size"), Arg("size"), Arg("in"), Arg("in"),
             Arg("out"), Arg("none", (np.zeros(m, I64), 0))]  # float weights take no row indices
    return args, kinds


def linear_experts_rows_call(rng, rows: list[int], t: int, k: int, n: int):
    """Q8_0 experts (random packed bytes) whose product rows read rows of x (t, k) by index."""
    ws = tuple(rng.integers(0, 256, -(-n // _cpu.ROWS) * _cpu.group_bytes(T_Q8_0, k), dtype=np.uint8) for _ in rows)
    m = sum(rows)
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(I64)
    args = [T_Q8_0, ws, n, k, randn(rng, t, k), starts, np.zeros((m, n), F32), rng.integers(0, t, m).astype(I64)]
    kinds = [Arg("free", (-1, 0, 7, 256, 2**31)), Arg("weights"), Arg("size"), Arg("size"),
             Arg("free", (None, randn(rng, t, k + 1), randn(rng, t, k).astype(np.float64))), Arg("in"), Arg("out"),
             Arg("optional in")]  # None reads x's rows in order: valid where x has m rows
    return args, kinds


def pack_blocks_call(rng, n: int, k: int):
    src = rng.integers(0, 256, (n, k // 32 * 34), dtype=np.uint8)
    dst = np.zeros(-(-n // _cpu.ROWS) * _cpu.group_bytes(T_Q8_0, k), U8)
    return [T_Q8_0, src, n, k, dst], [Arg("free", (-1, 0, 12, 256)), Arg("in"), Arg("size"), Arg("size"), Arg("out")]


def attention_call(rng, h: int, g: int, t: int, extra: int, d: int):
    length = t + extra
    q = randn(rng, t, h, d).transpose(1, 0, 2)  # (H, T, D) view of a (T, H, D) array, as decode passes
    k, v = randn(rng, g, length, d), randn(rng, g, length + 3, d)[:, 3:]  # v: a cache-like view of a longer buffer
    args = [q, k, v, T_F32, h, g, t, length, d, 0.125, np.zeros((t, h * d), F32), 0, randn(rng, h)]
    kinds = [Arg("sin"), Arg("sin"), Arg("sin"), Arg("size"), Arg("size"), Arg("size"), Arg("size"), Arg("size"),
             Arg("size"), Arg("float"), Arg("out"), Arg("free", (-1, 2**64, 1.5, None)), Arg("optional in")]  # sinks
    return args, kinds


def attention_batch_call(rng, h: int, g: int, d: int, ts: list[int], offsets: list[int]):
    n_layers, max_tokens, rope_dim = 2, max(o + t for o, t in zip(offsets, ts)) + 2, d
    n = sum(ts)
    qkv = randn(rng, n, h + 2 * g + 1, d)[:, 1:]  # rows farther apart than their heads: a strided view
    desc = np.array([(t, o) for t, o in zip(ts, offsets)], I64)
    keys = tuple(randn(rng, n_layers, g, max_tokens, d) for _ in ts)
    values = tuple(randn(rng, n_layers, g, max_tokens, d) for _ in ts)
    positions = max_tokens + 1
    cos, sin = randn(rng, positions, rope_dim // 2), randn(rng, positions, rope_dim // 2)
    args = [desc, keys, values, 1, qkv, h, g, d, T_F32, 0.25, 0, np.zeros((n, h * d), F32), cos, sin, rope_dim, True,
            randn(rng, h)]
    kinds = [Arg("in"), Arg("caches"), Arg("caches"), Arg("free", (-1, n_layers, 2**40 + 1)), Arg("sout"),
             Arg("size"), Arg("size"), Arg("size"), Arg("size"), Arg("float"), Arg("free", (-1, 2**64, 1.5)),
             Arg("out"), Arg("in"), Arg("in"), Arg("size"), Arg("free", (2, -1, None)),
             Arg("optional in")]  # sinks
    return args, kinds


def kv_quantize_call(rng, heads: int, rows: int, blocks: int):
    d = 32 * blocks
    x = randn(rng, rows, heads, d).transpose(1, 0, 2)
    out = np.zeros((heads, rows + 2, blocks * 34), U8)[:, 1:-1]  # cache rows of a longer cache
    return [x, out, heads, rows, d], [Arg("sin"), Arg("sout"), Arg("size"), Arg("size"), Arg("size")]


def rms_norm_call(rng, t: int, d: int):
    args = [randn(rng, t, d), randn(rng, d), np.zeros((t, d), F32), t, d, 1e-5]
    return args, [Arg("in"), Arg("in"), Arg("out"), Arg("size"), Arg("size"), Arg("float")]


def rope_call(rng, t: int, h: int, d: int, start: int):
    rope_dim, positions = d - d % 4 or 2, start + t + 1
    x = randn(rng, t, h + 1, d)[:, :h]  # the q heads of a fused row
    cos, sin = randn(rng, positions, rope_dim // 2), randn(rng, positions, rope_dim // 2)
    args = [x, t, h, d, cos, sin, start, rope_dim, False]
    kinds = [Arg("sout"), Arg("size"), Arg("size"), Arg("size"), Arg("in"), Arg("in"),
             Arg("free", (-1, positions, 2**40 + 1, None)), Arg("size"), Arg("free", (2, -1, None))]
    return args, kinds


def silu_mul_call(rng, t: int, f: int):
    return [randn(rng, t, 2 * f), np.zeros((t, f), F32), t, f], [Arg("in"), Arg("out"), Arg("size"), Arg("size")]


def route_call(rng, n: int, experts: int, k: int):
    args = [randn(rng, n, experts), np.zeros((n, k), I64), np.zeros((n, k), F32), n, experts, k, 1]
    return args, [Arg("in"), Arg("out"), Arg("out"), Arg("size"), Arg("size"), Arg("size"), Arg("free", (2, -1))]


def combine_experts_call(rng, n: int, k: int, d: int):
    order = rng.permutation(n * k).astype(I64)
    args = [randn(rng, n * k, d), randn(rng, n, k), order, np.zeros((n, d), F32), n, k, d]
    return args, [Arg("in"), Arg("in"), Arg("in"), Arg("out"), Arg("size"), Arg("size"), Arg("size")]


small = st.integers(1, 5)
CALLS = {
    "linear": (lambda d, rng: linear_call(rng, d.draw(small), 32 * d.draw(small), d.draw(st.integers(1, 40)))),
    "linear_experts": (lambda d, rng: linear_experts_call(rng, d.draw(st.lists(st.integers(0, 3), min_size=1,
                                                                                 max_size=4)),
                                                          32 * d.draw(small), d.draw(st.integers(1, 40)))),
    # every expert with a row: with none, out holds no bytes and N + 1 may fit the same padded 16-row groups
    "linear_experts (rows)": (lambda d, rng: linear_experts_rows_call(
        rng, d.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)), d.draw(small), 32 * d.draw(small),
        d.draw(st.integers(1, 40)))),
    "pack_blocks": (lambda d, rng: pack_blocks_call(rng, d.draw(st.integers(1, 40)), 32 * d.draw(small))),
    "attention": (lambda d, rng: attention_call(rng, 2 * d.draw(st.integers(1, 2)), d.draw(st.integers(1, 2)),
                                                d.draw(small), d.draw(st.integers(0, 70)), 4 * d.draw(small))),
    "attention_batch": (lambda d, rng: attention_batch_call(
        rng, 2, d.draw(st.integers(1, 2)), 4 * d.draw(small), d.draw(st.lists(small, min_size=1, max_size=3)),
        d.draw(st.lists(st.integers(0, 9), min_size=3, max_size=3)))),
    "kv_quantize_q8_0": (lambda d, rng: kv_quantize_call(rng, d.draw(small), d.draw(small), d.draw(st.integers(1, 3)))),
    "rms_norm": (lambda d, rng: rms_norm_call(rng, d.draw(small), d.draw(st.integers(1, 70)))),
    "rope": (lambda d, rng: rope_call(rng, d.draw(small), d.draw(small), 2 * d.draw(small), d.draw(st.integers(0, 9)))),
    "silu_mul": (lambda d, rng: silu_mul_call(rng, d.draw(small), d.draw(st.integers(1, 40)))),
    "route": (lambda d, rng: route_call(rng, d.draw(small), *d.draw(st.sampled_from([(2, 1), (8, 3), (64, 8)])))),
    "combine_experts": (lambda d, rng: combine_experts_call(rng, d.draw(small), d.draw(small),
                                                            d.draw(st.integers(1, 40)))),
}


# ---- ways to break one argument ----

def bad_arrays(a: np.ndarray, kind: str) -> list:
    """Replacements of array argument `a` that the entry point must refuse."""
    other = F16 if a.dtype == F32 else np.dtype(np.int32) if a.dtype == I64 else np.dtype(np.int8)
    flat = a.reshape(-1)
    wrong = [a.astype(np.float64), a.astype(other), int(a.ctypes.data), None, a.tolist() if a.size < 64 else [0.0]]
    if kind in ("in", "out"):  # exact length, C-contiguous: gaps along any axis of more than one element are wrong
        wrong += [np.resize(flat, flat.size + 1)]
        if a.size:  # an empty array cut shorter or strided is still the right (empty) buffer
            wrong += [flat[:-1].copy()] + [strided(a, axis) for axis in {0, a.ndim - 1} if a.shape[axis] > 1]
    else:  # exact shape, contiguous last dimension
        wrong += [a[:-1], np.concatenate([a, a[:1]]), a.reshape(a.shape[0], -1)]
        wrong += [strided(a, a.ndim - 1)] if a.shape[-1] > 1 else []
    if kind in ("out", "sout"):
        wrong.append(read_only(a))
    if kind == "sout" and a.shape[0] > 1:  # rows aliased: every row of the view is the same memory
        wrong.append(np.lib.stride_tricks.as_strided(a, strides=(0, *a.strides[1:]), writeable=True))
    return wrong


def bad_caches(caches: tuple) -> list:
    c = caches[0]
    one = [c.astype(F16), read_only(c), c[:, :, :-1], np.ascontiguousarray(c[:, :-1]) if c.shape[1] > 1 else c[:1, :0],
           c[..., ::2] if c.shape[-1] > 1 else c[..., :0], c.reshape(c.shape[0], -1), int(c.ctypes.data), None]
    return [(x, *caches[1:]) for x in one] + [list(caches), caches[:-1], (*caches, c), None]


def bad_weights(weights: tuple) -> list:
    one = [[x, *weights[1:]] for x in bad_arrays(weights[0], "in")]
    return [tuple(ws) for ws in one] + [list(weights), weights[:-1], (*weights, weights[0]), None]


def bad_values(value, arg: Arg) -> list:
    if arg.kind in ("in", "out", "sin", "sout"):
        return bad_arrays(value, arg.kind)
    if arg.kind == "optional in":  # as "in", but None (the default: none) is valid
        return [bad for bad in bad_arrays(value, "in") if bad is not None]
    if arg.kind == "weights":
        return bad_weights(value)
    if arg.kind == "none":
        return list(arg.bad)
    if arg.kind == "caches":
        return bad_caches(value)
    if arg.kind == "float":
        return NOT_FLOATS
    if arg.kind == "size":
        return [value + 1, value - 1, *BIG, *NOT_INTS]
    return list(arg.bad) + NOT_INTS


def call(name: str, args: list):
    return getattr(_cpu, name.split()[0])(*args)  # "linear_experts (rows)": the same entry point, another use


@pytest.mark.parametrize("name", sorted(CALLS))
@FUZZ
@given(data=st.data())
def test_a_broken_argument_raises_internal_error(name, data):
    rng = rng_for(data)
    args, kinds = CALLS[name](data, rng)
    i = data.draw(st.integers(0, len(args) - 1), label="argument")
    held = arrays_in(args)
    references = [sys.getrefcount(a) for a in held]
    wrong = bad_values(args[i], kinds[i])
    for bad in wrong:
        broken = list(args)
        broken[i] = bad
        with pytest.raises(InternalError):
            call(name, broken)
    del wrong, bad, broken  # (views among them hold their base arrays)
    assert [sys.getrefcount(a) for a in held] == references  # every buffer view taken was released
    assert call(name, args) is None  # the valid call still runs


def arrays_in(args: list) -> list[np.ndarray]:
    """The arrays of a call, those in tuples (caches) included."""
    flat = [x for a in args for x in (a if isinstance(a, tuple) else (a,))]
    return [a for a in flat if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("name", sorted(CALLS))
@FUZZ
@given(data=st.data())
def test_wrong_argument_counts_raise_internal_error(name, data):
    args, _ = CALLS[name](data, rng_for(data))
    with pytest.raises(InternalError, match="takes"):
        call(name, args[:-1])
    with pytest.raises(InternalError, match="takes"):
        call(name, [*args, 0])


@pytest.mark.parametrize("bad", [0, -1, -(2**31), 2**31, 2**63, 2**64, _cpu.MAX_THREADS + 1, 2.0, None, "4"])
def test_absurd_thread_counts_are_refused_at_both_layers(bad):
    before = get_num_threads()
    with pytest.raises(InternalError):
        _cpu.set_num_threads(bad)
    with pytest.raises(RequestError):
        set_num_threads(bad)
    assert get_num_threads() == before


def test_thread_counts_up_to_the_bound_are_taken():
    before = get_num_threads()
    try:
        for n in (1, _cpu.MAX_THREADS):
            set_num_threads(n)
            assert get_num_threads() == n
    finally:
        set_num_threads(before)


@pytest.mark.parametrize("bad", [[-1, 64], [256, 64], [2**31, 64], [None, 64], [8, -1], [8, 2**63], [8, 1.0], [8],
                                 [8, 64, 1]])
def test_group_bytes_refuses_non_sizes(bad):
    with pytest.raises(InternalError):
        _cpu.group_bytes(*bad)


def test_group_bytes_is_sixteen_file_rows():
    for k in (32, 64, 4096):
        assert _cpu.group_bytes(T_Q8_0, k) == 16 * k // 32 * 34  # the layout keeps the file's bytes, interleaved
    assert _cpu.group_bytes(T_Q8_0, 33) == -1  # no whole blocks: no kernel, an answer rather than an error


# ---- the happy path against independent references ----

@pytest.mark.parametrize("rows", [[1], [2, 0, 3], [0, 5, 1, 1]])
def test_linear_experts_matches_numpy(rows):
    args, _ = linear_experts_call(np.random.default_rng(len(rows)), rows, 64, 24)
    call("linear_experts", args)
    _, ws, n, k, x, starts, out, _ = args
    for w, a, b in zip(ws, starts[:-1], starts[1:]):
        np.testing.assert_allclose(out[a:b], x[a:b] @ w.view(F32).reshape(n, k).T, rtol=1e-5, atol=1e-5)


def test_linear_experts_refuses_rows_outside_x():
    args, _ = linear_experts_rows_call(np.random.default_rng(0), [2, 1], 4, 32, 8)
    for bad in ([0, 1, 4], [0, -1, 2]):
        args[7] = np.array(bad, I64)
        with pytest.raises(InternalError, match="rows"):
            call("linear_experts", args)


def test_linear_experts_refuses_starts_out_of_order():
    args, _ = linear_experts_call(np.random.default_rng(0), [2, 1], 32, 8)
    for starts in ([0, 2, 1], [1, 2, 3], [0, 3, 2]):
        args[5] = np.array(starts, I64)
        with pytest.raises(InternalError, match="starts"):
            call("linear_experts", args)


@pytest.mark.parametrize("t,k,n", [(1, 32, 1), (3, 64, 17), (5, 96, 40)])
def test_linear_matches_numpy(t, k, n):
    args, _ = linear_call(np.random.default_rng(t + k + n), t, k, n)
    call("linear", args)
    w = args[1].view(F32).reshape(n, k)
    np.testing.assert_allclose(args[6], args[4].astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,g,t,extra,d", [(2, 1, 1, 0, 4), (4, 2, 3, 70, 8), (2, 2, 5, 9, 20)])
def test_attention_matches_numpy(h, g, t, extra, d):
    args, _ = attention_call(np.random.default_rng(h + t + extra + d), h, g, t, extra, d)
    call("attention", args)
    q, k, v, scale, out, sinks = args[0].astype(np.float64), args[1], args[2], args[9], args[10], args[12]
    length = t + extra
    want = np.empty((t, h, d))
    for head in range(h):
        kv = head // (h // g)
        scores = scale * q[head] @ k[kv].T  # (T, L)
        scores[np.arange(length)[None, :] > np.arange(length - t, length)[:, None]] = -np.inf  # causal
        top = np.maximum(scores.max(axis=1, keepdims=True), sinks[head])  # the sink joins the denominator only
        p = np.exp(scores - top)
        want[:, head] = (p / (p.sum(axis=1, keepdims=True) + np.exp(sinks[head] - top))) @ v[kv]
    np.testing.assert_allclose(out, want.reshape(t, h * d), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("heads,rows,blocks", [(1, 1, 1), (2, 3, 2), (4, 2, 3)])
def test_kv_quantize_matches_gguf(heads, rows, blocks):
    args, _ = kv_quantize_call(np.random.default_rng(heads * rows * blocks), heads, rows, blocks)
    call("kv_quantize_q8_0", args)
    x, out = args[0], args[1]
    want = gguf.quants.quantize(np.ascontiguousarray(x).reshape(-1, 32 * blocks), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(out.reshape(-1, blocks * 34), want)


@pytest.mark.parametrize("t,d", [(1, 1), (3, 64), (5, 70)])
def test_rms_norm_matches_numpy(t, d):
    args, _ = rms_norm_call(np.random.default_rng(t * d), t, d)
    call("rms_norm", args)
    x, w = args[0].astype(np.float64), args[1].astype(np.float64)
    want = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(args[2], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("t,h,d,start", [(1, 1, 2, 0), (3, 2, 8, 4), (5, 3, 10, 9)])
def test_rope_matches_numpy(t, h, d, start):
    args, _ = rope_call(np.random.default_rng(t + h + d + start), t, h, d, start)
    x0 = args[0].astype(np.float64)
    cos, sin, rope_dim = args[4][start:start + t, None, :], args[5][start:start + t, None, :], args[7]
    call("rope", args)
    half = rope_dim // 2
    first, second = x0[..., :half], x0[..., half:rope_dim]  # neox pairs (i, i + rope_dim / 2)
    want = np.concatenate([first * cos - second * sin, first * sin + second * cos, x0[..., rope_dim:]], axis=-1)
    np.testing.assert_allclose(args[0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t,f", [(1, 1), (3, 40), (5, 7)])
def test_silu_mul_matches_numpy(t, f):
    args, _ = silu_mul_call(np.random.default_rng(t * f), t, f)
    call("silu_mul", args)
    gate, up = args[0][:, :f].astype(np.float64), args[0][:, f:].astype(np.float64)
    np.testing.assert_allclose(args[1], gate / (1 + np.exp(-gate)) * up, rtol=1e-6, atol=1e-7)


def test_the_c_cores_block_geometry_is_ggufs():
    """The file block sizes csrc/qgemm.h hard-codes (checked against deeproots.quant at import) are GGML's."""
    assert _cpu.FILE_BLOCK_BYTES.keys() == {2, 3, 8}  # Q4_0, Q4_1, Q8_0
    for type_id, geometry in _cpu.FILE_BLOCK_BYTES.items():
        assert geometry == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
