"""The attention kernel against torch's SDPA in float64, within its documented bound, over f32, f16 and q8_0 caches
(q8_0 against its dequantized values), with and without a sliding window; and its invariance: a row's result is the
same bits whatever the number of rows in the call and the number of threads.

The installed extension is built for this machine's best ISA; the AVX2 and portable C paths of csrc/attention.c are
built here too (-march=x86-64-v3 and -march=x86-64, as a plain library called through ctypes) and checked the same way.
"""

import ctypes
import math
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeproots.cache.kv import dequantize_rows
from deeproots.errors import RequestError
from deeproots.kernels import cached_attention, get_num_threads, set_num_threads
from deeproots.backends.formulas import causal_attention
from deeproots.quant import GGMLType, quantize

U = 2.0**-24  # f32 unit roundoff
CSRC = Path(__file__).resolve().parents[2] / "deeproots" / "kernels" / "csrc"
HEADS = [(9, 3), (8, 8), (4, 1)]  # (n_heads, n_kv_heads)
CACHE = 320  # positions the test cache holds: k and v are views with a head stride larger than L * D
KV_TYPES = ["f32", "f16", "q8_0"]
WINDOWS = [1, 3, 64, 65, 1000]  # one key; a few; a whole chunk; a chunk and one; more than any L here


def cache_rows(x: np.ndarray, kv_type: str) -> np.ndarray:
    """x (n_kv, positions, D) f32 as a cache of `kv_type` stores it; q8_0 through the quant module's quantizer."""
    if kv_type == "q8_0":
        return quantize(x, GGMLType.Q8_0)  # (n_kv, positions, D / 32 * 34) uint8
    return x.astype({"f32": np.float32, "f16": np.float16}[kv_type])


def values_of(rows: np.ndarray) -> np.ndarray:
    """The values the kernel computes with: floats as they are, q8_0 rows dequantized (exact in f32)."""
    return dequantize_rows(rows) if rows.dtype == np.uint8 else rows


def make_inputs(n_heads: int, n_kv: int, T: int, L: int, D: int, kv_type: str, seed: int):
    """q (n_heads, T, D) as the model's transposed view of (T, n_heads, D); k, v (n_kv, L, row) views into a cache."""
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((T, n_heads, D), dtype=np.float32) * 1.5).swapaxes(0, 1)
    k = cache_rows(rng.standard_normal((n_kv, CACHE, D), dtype=np.float32) * 1.5, kv_type)[:, :L]
    v = cache_rows(rng.standard_normal((n_kv, CACHE, D), dtype=np.float32), kv_type)[:, :L]
    return q, k, v


def visible_keys(T: int, L: int, window: int | None) -> np.ndarray:
    """(T, L): query i (position L - T + i) sees key j iff j <= L - T + i and L - T + i - j < window."""
    position = np.arange(L - T, L)[:, None]
    key = np.arange(L)[None, :]
    return (key <= position) & ((position - key < window) if window else True)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int | None = None) -> np.ndarray:
    """PyTorch's SDPA (an independent reference) in float64 on the same (f16-rounded or dequantized, where so)
    values: (T, n_heads * D)."""
    T, L = q.shape[1], k.shape[1]
    q, k, v = (torch.from_numpy(a.astype(np.float64)) for a in (q, values_of(k), values_of(v)))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(visible_keys(T, L, window)),
                                         scale=scale, enable_gqa=True)
    return out.transpose(0, 1).reshape(T, -1).numpy()


def error_bound(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                window: int | None = None) -> np.ndarray:
    """The bound documented in deeproots/kernels/attention.py, per output (T, n_heads * D)."""
    k, v = values_of(k), values_of(v)
    (H, T, D), (G, L, _) = q.shape, k.shape
    gamma = lambda m: m * U / (1 - m * U)  # noqa: E731
    qd = q.astype(np.float64)
    kd = np.repeat(k.astype(np.float64), H // G, axis=0)  # (H, L, D)
    vd = np.abs(np.repeat(v.astype(np.float64), H // G, axis=0))
    visible = visible_keys(T, L, window)
    n = visible.sum(1).astype(np.float64)  # keys per row
    scores = np.where(visible, qd @ kd.transpose(0, 2, 1) * scale, -np.inf)  # (H, T, L)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)  # softmax
    delta = np.where(visible, gamma(D + 2) * abs(scale) * (np.abs(qd) @ np.abs(kd).transpose(0, 2, 1)), 0)
    delta = delta.max(-1, keepdims=True)  # (H, T, 1)
    spans = [(i + 1 - window if window and i + 1 > window else 0, i + 1) for i in range(L - T, L)]  # visible keys
    vmax = np.stack([vd[:, a:b].max(1) for a, b in spans], axis=1)  # (H, T, D): max |v| over each row's keys
    bound = 2.02 * delta * (p @ vd) + ((3 * n + 24) * U)[None, :, None] * vmax
    return bound.transpose(1, 0, 2).reshape(T, -1)


def check(attend, n_heads: int, n_kv: int, T: int, L: int, D: int, kv_type: str, seed: int,
          window: int | None = None) -> None:
    q, k, v = make_inputs(n_heads, n_kv, T, L, D, kv_type, seed)
    scale = 1.0 / math.sqrt(D)
    out = attend(q, k, v, scale, window=window)
    assert out.shape == (T, n_heads * D) and out.dtype == np.float32 and out.flags.c_contiguous
    err = np.abs(out.astype(np.float64) - reference(q, k, v, scale, window))
    with np.errstate(invalid="ignore"):  # 0 / 0: q8_0 values of 0
        worst = np.nan_to_num(err / error_bound(q, k, v, scale, window), nan=0.0).max()
    assert worst <= 1.0, (f"H={n_heads}/{n_kv} T={T} L={L} D={D} {kv_type} window={window}: error reaches "
                          f"{worst:.3f} of the bound")


def head_sizes(kv_type: str) -> list[int]:
    """The specialised sizes 64 and 128 and a generic one (q8_0 needs a multiple of 32)."""
    return [64, 128, 96 if kv_type == "q8_0" else 40]


@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("size", [0, 1, 2], ids=["D64", "D128", "Dodd"])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}x{h[1]}")
@pytest.mark.parametrize("T", [1, 3, 8, 33])
def test_matches_sdpa_within_bound(T, heads, size, kv_type):
    D = head_sizes(kv_type)[size]
    for i, L in enumerate(sorted({T, T + 1, T + 64, 300})):  # 64: a chunk of keys ends exactly at the last one
        check(cached_attention, *heads, T, L, D, kv_type, seed=1000 * T + 10 * D + i)


@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("T", [1, 7, pytest.param(70, marks=pytest.mark.slow)])  # 70: seconds each
def test_sliding_window_matches_sdpa_within_bound(T, window, kv_type):
    for i, (heads, L, D) in enumerate([((9, 3), 300, 64), ((4, 1), T + 64, head_sizes(kv_type)[2]),
                                       ((8, 8), T, 128), ((9, 3), 129, 64)]):
        check(cached_attention, *heads, T, L, D, kv_type, seed=100 * T + window + i, window=window)


def test_q8_0_cache_stays_near_the_float32_one():
    """Against the unquantized keys and values: Q8_0 rounds each value by up to 1/254 of its block's largest."""
    for seed, D in enumerate([64, 128, 96]):
        rng = np.random.default_rng(seed)
        q = (rng.standard_normal((33, 9, D), dtype=np.float32) * 1.5).swapaxes(0, 1)
        k = rng.standard_normal((3, 300, D), dtype=np.float32) * 1.5
        v = rng.standard_normal((3, 300, D), dtype=np.float32)
        out = cached_attention(q, cache_rows(k, "q8_0"), cache_rows(v, "q8_0"), 1 / math.sqrt(D))
        exact = reference(q, k, v, 1 / math.sqrt(D))
        assert np.abs(out.astype(np.float64) - exact).max() <= 0.03 * np.abs(v).max()  # measured: at most 0.012


@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("window", [None, *WINDOWS])
def test_reference_attention_matches_sdpa(window, kv_type):
    """layers.causal_attention, the slow path the models' reference runs, also for T = 1 with a window."""
    for T, L in [(1, 1), (1, 200), (5, 200), (200, 200)]:
        q, k, v = make_inputs(9, 3, T, L, 64, kv_type, seed=T + L)
        expected = reference(q, k, v, 0.125, window)
        assert np.abs(causal_attention(q, k, v, 0.125, window=window).astype(np.float64) - expected).max() < 1e-5


def test_bound_is_tight_enough_to_mean_something():
    """A few 1e-4 of max |v| at L=300, where dropping a single key moves the output past it."""
    q, k, v = make_inputs(9, 3, 8, 300, 64, "f32", seed=1)
    bound = error_bound(q, k, v, 0.125)
    assert bound.max() < 3e-4 * np.abs(v).max()
    keep = np.arange(300) != 150
    dropped = reference(q, k[:, keep], v[:, keep], 0.125)
    assert (np.abs(cached_attention(q, k, v, 0.125).astype(np.float64) - dropped) > bound).any()


@pytest.mark.parametrize("window", [None, 1, 64, 65, 100])
@pytest.mark.parametrize("kv_type,D", [("f32", 64), ("f16", 40), ("q8_0", 64), ("q8_0", 96)])
def test_rows_do_not_depend_on_the_call(kv_type, D, window):
    """Prefill in one call == any split into calls over a growing cache (each with the right L) == one row at a time."""
    L = 300
    q, k, v = make_inputs(9, 3, L, L, D, kv_type, seed=D)
    whole = cached_attention(q, k, v, 0.125, window=window)
    for cuts in ([0, 5, 70, 71, 200, 300], [0, 1, 2, 64, 65, 129, 300], list(range(0, 301, 20)), list(range(L + 1))):
        parts = [cached_attention(q[:, a:b], k[:, :b], v[:, :b], 0.125, window=window)
                 for a, b in zip(cuts, cuts[1:])]
        assert np.array_equal(np.concatenate(parts), whole), f"cuts {cuts[:8]}..."


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_thread_counts_give_identical_results(kv_type):
    q, k, v = make_inputs(9, 3, 33, 300, 64, kv_type, seed=2)
    before = get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            set_num_threads(threads)
            results.append(cached_attention(q, k, v, 0.125))
            results.append(cached_attention(q, k, v, 0.125, window=70))
    finally:
        set_num_threads(before)
    assert all(np.array_equal(results[i % 2], r) for i, r in enumerate(results))


def test_window_zero_or_longer_than_the_cache_is_no_window():
    q, k, v = make_inputs(9, 3, 20, 50, 64, "f16", seed=7)
    whole = cached_attention(q, k, v, 0.125)
    assert all(np.array_equal(cached_attention(q, k, v, 0.125, window=w), whole) for w in (0, 50, 51))
    assert not np.array_equal(cached_attention(q, k, v, 0.125, window=49), whole)


def test_writes_into_out_and_handles_zero_rows():
    q, k, v = make_inputs(4, 1, 3, 10, 64, "f32", seed=3)
    out = np.full((3, 256), np.nan, np.float32)
    assert cached_attention(q, k, v, 0.125, out) is out
    assert np.array_equal(out, cached_attention(q, k, v, 0.125))
    assert cached_attention(np.empty((4, 0, 64), np.float32), k, v, 0.125).shape == (0, 256)  # numpy: strides 0
    assert cached_attention(q[:, :0], k, v, 0.125).shape == (0, 256)


def test_contiguous_inputs_give_the_same_bits_as_views():
    for kv_type in ("f16", "q8_0"):
        q, k, v = make_inputs(8, 8, 5, 40, 128, kv_type, seed=4)
        contiguous = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
        assert np.array_equal(cached_attention(q, k, v, 0.1), cached_attention(*contiguous, 0.1))


def test_read_only_cache_and_query_are_accepted():
    """The inputs are only read: read-only q, k and v (e.g. a prefix shared between requests) work alike."""
    q, k, v = make_inputs(9, 3, 4, 40, 64, "f16", seed=9)
    frozen = [a.copy() for a in (q, k, v)]
    for a in frozen:
        a.flags.writeable = False
    assert np.array_equal(cached_attention(*frozen, 0.125), cached_attention(q, k, v, 0.125))


def randn(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _args(**changes):
    q, k, v = make_inputs(4, 2, 3, 10, 16, "f32", seed=5)
    args = {"q": q, "k": k, "v": v, "scale": 0.25, "out": None, "window": None}
    args.update({name: change(args) for name, change in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes",
    [
        {"q": lambda a: a["q"].astype(np.float64)},
        {"q": lambda a: a["q"][0]},
        {"q": lambda a: a["q"].swapaxes(1, 2)},
        {"q": lambda a: a["q"][:, :, :8]},
        {"q": lambda a: a["q"][:3]},
        {"q": lambda a: randn(4, 11, 16)},
        {"q": lambda a: a["q"].tolist()},
        {"k": lambda a: a["k"].astype(np.float16)},
        {"k": lambda a: a["k"].astype(np.float64), "v": lambda a: a["v"].astype(np.float64)},  # no kernel for it
        {"v": lambda a: a["v"][:, :9]},
        {"k": lambda a: a["k"][:, :, :0], "v": lambda a: a["v"][:, :, :0], "q": lambda a: a["q"][:, :, :0]},
        {"k": lambda a: a["k"][:0], "v": lambda a: a["v"][:0]},
        {"scale": lambda a: "0.25"},
        {"out": lambda a: np.empty((3, 63), np.float32)},
        {"out": lambda a: np.empty((64, 3), np.float32).T},
        {"out": lambda a: np.empty((3, 64), np.float64)},
        {"out": lambda a: read_only(np.empty((3, 64), np.float32))},
        {"window": lambda a: -1},
        {"window": lambda a: 2.0},
        {"window": lambda a: "8"},
        {"window": lambda a: True},
        # uint8 rows are q8_0 blocks: D = 16 is no multiple of 32, and D = 32 needs 34 bytes a row, not 32
        {"k": lambda a: np.zeros(a["k"].shape, np.uint8), "v": lambda a: np.zeros(a["v"].shape, np.uint8)},
        {"q": lambda a: randn(4, 3, 32), "k": lambda a: np.zeros((2, 10, 32), np.uint8),
         "v": lambda a: np.zeros((2, 10, 32), np.uint8)},
        {"q": lambda a: randn(4, 3, 34), "k": lambda a: np.zeros((2, 10, 34), np.uint8),
         "v": lambda a: np.zeros((2, 10, 34), np.uint8)},
        {"q": lambda a: randn(4, 3, 32), "k": lambda a: np.zeros((2, 10, 34), np.uint8)},
        # strides that are no whole number of elements (a float32 view of bytes at odd offsets)
        {"q": lambda a: np.ndarray((4, 3, 16), np.float32, np.zeros(4096, np.uint8), strides=(258, 66, 4))},
    ],
    ids=["q-float64", "q-2d", "q-strided-last", "q-D-mismatch", "heads-not-multiple", "T-over-L", "q-list",
         "kv-dtypes-differ", "kv-float64", "kv-shapes-differ", "D-zero", "no-kv-heads", "scale-str", "out-shape",
         "out-strided", "out-dtype", "out-read-only", "window-negative", "window-float", "window-str", "window-bool",
         "q8_0-D-16", "q8_0-row-too-short", "q8_0-D-34", "q8_0-k-only", "q-strides-of-bytes"],
)
def test_bad_arguments_raise_request_error(changes):
    with pytest.raises(RequestError):
        cached_attention(**_args(**changes))


@pytest.mark.parametrize("window", [-1, 2.0, "8", True])
def test_reference_rejects_bad_windows(window):
    q, k, v = make_inputs(4, 2, 3, 10, 16, "f32", seed=5)
    with pytest.raises(RequestError):
        causal_attention(q, k, v, 0.25, window=window)


class _Attn(ctypes.Structure):  # attn_t in csrc/attention.h
    _fields_ = [("q", ctypes.c_void_p), ("q_head", ctypes.c_int64), ("q_row", ctypes.c_int64),
                ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("k_head", ctypes.c_int64),
                ("k_row", ctypes.c_int64), ("v_head", ctypes.c_int64), ("v_row", ctypes.c_int64),
                ("kv_type", ctypes.c_int), ("n_heads", ctypes.c_int64), ("n_kv_heads", ctypes.c_int64),
                ("T", ctypes.c_int64), ("L", ctypes.c_int64), ("D", ctypes.c_int64), ("scale", ctypes.c_float),
                ("out", ctypes.c_void_p), ("window", ctypes.c_int64), ("sinks", ctypes.c_void_p)]


class _FallbackBuild:
    """csrc/attention.c built for an older ISA: attention, and the q8_0 quantizer, called through ctypes."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.attention_run.argtypes = [ctypes.POINTER(_Attn), ctypes.c_int]
        lib.kv_quantize_q8_0.argtypes = [ctypes.c_void_p, *[ctypes.c_int64] * 2, ctypes.c_void_p,
                                         *[ctypes.c_int64] * 5]

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, threads: int = 2,
                 window: int | None = None) -> np.ndarray:
        (H, T, D), (G, L, _) = q.shape, k.shape
        out = np.empty((T, H * D), np.float32)
        kv_type = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.uint8): 8}[k.dtype]
        qs, ks, vs = (elements(a.strides, a.itemsize) for a in (q, k, v))
        args = _Attn(q.ctypes.data, qs[0], qs[1], k.ctypes.data, v.ctypes.data, ks[0], ks[1], vs[0], vs[1], kv_type,
                     H, G, T, L, D, scale, out.ctypes.data, window or 0, None)
        self.lib.attention_run(ctypes.byref(args), threads)
        return out

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """x (heads, rows, D) f32 -> (heads, rows, D / 32 * 34) q8_0 bytes."""
        heads, rows, D = x.shape
        out = np.empty((heads, rows, D // 32 * 34), np.uint8)
        xs = elements(x.strides, x.itemsize)
        self.lib.kv_quantize_q8_0(x.ctypes.data, xs[0], xs[1], out.ctypes.data, out.strides[0], out.strides[1],
                                  heads, rows, D)
        return out


def elements(strides: tuple, itemsize: int) -> list[int]:
    """numpy's strides in bytes as the C core takes them: in elements."""
    return [s // itemsize for s in strides]


@pytest.fixture(scope="module", params=["x86-64-v3", "x86-64"], ids=["avx2", "portable-c"])
def fallback_attention(request, tmp_path_factory):
    """attention through csrc/attention.c built for an older ISA, as a plain library called through ctypes."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() != "x86_64":
        pytest.skip("needs a C compiler on x86-64")
    lib_path = tmp_path_factory.mktemp(request.param) / "attention.so"
    sources = [str(CSRC / "attention.c"), str(CSRC / "pool.c")]
    cmd = [compiler, "-O2", f"-march={request.param}", "-std=c11", "-shared", "-fPIC", "-pthread"]
    subprocess.run([*cmd, *sources, "-o", str(lib_path), "-lm"], check=True)
    return _FallbackBuild(ctypes.CDLL(str(lib_path)))


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_fallback_isas_match_sdpa_and_stay_invariant(fallback_attention, kv_type):
    odd = head_sizes(kv_type)[2]
    for heads, T, L, D, window in [((9, 3), 1, 17, 64, None), ((8, 8), 8, 100, 128, None), ((4, 1), 33, 300, odd, None),
                                   ((9, 3), 1, 200, 64, 65), ((4, 1), 33, 300, odd, 3)]:
        check(fallback_attention, *heads, T, L, D, kv_type, seed=T + D, window=window)
    q, k, v = make_inputs(9, 3, 130, 130, odd, kv_type, seed=6)
    for window in (None, 70):
        whole = fallback_attention(q, k, v, 0.125, threads=1, window=window)
        parts = [fallback_attention(q[:, a:b], k[:, :b], v[:, :b], 0.125, window=window)
                 for a, b in [(0, 1), (1, 65), (65, 130)]]
        assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
def test_fallback_isas_quantize_like_the_quant_module(fallback_attention):
    """Every f16 scale range (subnormal to near overflow), all-zero blocks, exact halves; strided views."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 300, 96), dtype=np.float32) * np.logspace(-8, 6, 300, dtype=np.float32)[None, :, None]
    x[0, 0] = 0
    x[1, 1, :32] = np.arange(-16, 16) + 0.5  # amax 127 would make d = 1: take 127 in, so every value is a half
    x[1, 1, 0] = 127
    assert np.array_equal(fallback_attention.quantize(x), cache_rows(x, "q8_0"))
    view = x.swapaxes(0, 1)[:, ::2]  # (300, 1, 96): strided heads and rows
    assert np.array_equal(fallback_attention.quantize(view), cache_rows(np.ascontiguousarray(view), "q8_0"))
