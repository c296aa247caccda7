"""rms_norm, rotary_embedding_ and silu_mul against the formulas of backends/formulas.py in float64, within the bounds
documented in deeproots/kernels/elementwise.py; rows independent of the call; fused-qkv views; bad arguments.

The installed extension is built for this machine's best ISA; the AVX2 and portable C paths of csrc/elementwise.c
are built here too (-march=x86-64-v3 and -march=x86-64, as a plain library called through ctypes) and checked the
same way.
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
from test_mixture import exact_route

from deeproots.backends import formulas
from deeproots.errors import RequestError
from deeproots.kernels import get_num_threads, rms_norm, rotary_embedding_, set_num_threads, silu_mul

U = 2.0**-24  # f32 unit roundoff
TINY = 2.0**-149  # f32's smallest subnormal: the absolute slack of a result that underflows
CSRC = Path(__file__).resolve().parents[2] / "deeproots" / "kernels" / "csrc"
ROWS = [1, 3, 64, 513]
WIDTHS = [576, 64, 1000, 999]
ROPE_SHAPES = [(64, 64), (64, 32), (48, 20), (128, 128)]  # (D, rope_dim): full, partial, odd pair count, wide


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --- references: the formulas of backends/formulas.py ---

def ref_rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x * (1 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * weight


def ref_rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, start: int, rope_dim: int,
               interleaved: bool) -> np.ndarray:
    """x (T, n_heads, D) rotated out of place, in x's dtype (the tables are cast to it)."""
    T = x.shape[0]
    cos = cos[start:start + T, None].astype(x.dtype)  # (T, 1, rope_dim/2)
    sin = sin[start:start + T, None].astype(x.dtype)
    rotated, passthrough = x[..., :rope_dim], x[..., rope_dim:]
    first, second = (rotated[..., 0::2], rotated[..., 1::2]) if interleaved else np.split(rotated, 2, axis=-1)
    out_first, out_second = first * cos - second * sin, first * sin + second * cos
    return np.concatenate((pair_up(out_first, out_second, interleaved), passthrough), axis=-1)


def pair_up(first: np.ndarray, second: np.ndarray, interleaved: bool) -> np.ndarray:
    """The rotated dims from their two halves: (..., rope_dim/2) each -> (..., rope_dim)."""
    if interleaved:
        return np.stack((first, second), axis=-1).reshape(*first.shape[:-1], 2 * first.shape[-1])
    return np.concatenate((first, second), axis=-1)


def rope_bound(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, start: int, rope_dim: int,
               interleaved: bool) -> np.ndarray:
    """2u (|first cos| + |second sin|) per rotated output, 0 on the passthrough dims: (T, n_heads, D)."""
    T = x.shape[0]
    c = np.abs(cos[start:start + T, None].astype(np.float64))
    s = np.abs(sin[start:start + T, None].astype(np.float64))
    r = np.abs(x[..., :rope_dim].astype(np.float64))
    first, second = (r[..., 0::2], r[..., 1::2]) if interleaved else np.split(r, 2, axis=-1)
    b = pair_up(first * c + second * s, first * s + second * c, interleaved)
    return np.concatenate((2 * U * b, np.zeros(x[..., rope_dim:].shape)), axis=-1)


def tables(rope_dim: int, positions: int = 600, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """layers.RotaryEmbedding's cos and sin tables: (positions, rope_dim/2) float32."""
    inv_freq = 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
    angles = np.outer(np.arange(positions, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rows_with_varied_scales(T: int, d: int, seed: int) -> np.ndarray:
    return randn(T, d, seed=seed) * np.logspace(-3, 3, T, dtype=np.float32)[:, None]


# --- the kernels, through any implementation (the extension, or a fallback ISA build) ---

def check_rms_norm(norm, T: int, d: int, seed: int) -> None:
    x = rows_with_varied_scales(T, d, seed)
    w = randn(d, seed=seed + 1)
    for eps in (1e-5, 1e-6, 0.5):
        out = norm(x, w, eps)
        exact = ref_rms_norm(x.astype(np.float64), w.astype(np.float64), eps)
        bound = (3 * U + 1e-12) * np.abs(exact) + TINY
        worst = (np.abs(out.astype(np.float64) - exact) / bound).max()
        assert worst <= 1.0, f"T={T} d={d} eps={eps}: error reaches {worst:.3f} of the bound"


def check_silu_mul(silu, T: int, F_: int, seed: int) -> None:
    gate_up = randn(T, 2 * F_, seed=seed) * 4
    gate_up[0, :F_] = np.linspace(-100, 100, F_)  # the whole range, past both ends of exp's
    out = silu(gate_up)
    gate, up = np.split(gate_up.astype(np.float64), 2, axis=-1)
    exact = F.silu(torch.from_numpy(gate)).numpy() * up  # PyTorch's SiLU: an independent reference
    bound = 6 * U * np.abs(exact) + np.where(gate < -88, np.abs(gate * up) * math.exp(-88), 0) + TINY
    worst = (np.abs(out.astype(np.float64) - exact) / bound).max()
    assert worst <= 1.0, f"T={T} F={F_}: error reaches {worst:.3f} of the bound"


def fused_qkv(T: int, n_heads: int, n_kv: int, D: int, seed: int) -> np.ndarray:
    """A (T, (n_heads + 2 n_kv) * D) qkv product's output, as the model gets it."""
    return randn(T, (n_heads + 2 * n_kv) * D, seed=seed) * 2


def check_rope(rotate, T: int, D: int, rope_dim: int, interleaved: bool, start: int, seed: int) -> None:
    """Rotate the q and k heads of a fused qkv buffer in one call: within the bound, the same bits as the float32
    formula, v columns untouched."""
    n_heads, n_kv = 9, 3
    cos, sin = tables(rope_dim)
    qkv = fused_qkv(T, n_heads, n_kv, D, seed)
    before = qkv.copy()
    heads = qkv.reshape(T, n_heads + 2 * n_kv, D)[:, :n_heads + n_kv]  # (T, q and k heads, D), row stride 15 D
    rotate(heads, cos, sin, start, rope_dim, interleaved)
    x = before.reshape(T, n_heads + 2 * n_kv, D)[:, :n_heads + n_kv]
    exact = ref_rotate(x.astype(np.float64), cos, sin, start, rope_dim, interleaved)
    error = np.abs(heads.astype(np.float64) - exact)
    worst = (error / (rope_bound(x, cos, sin, start, rope_dim, interleaved) + TINY)).max()
    where = f"T={T} D={D} rope_dim={rope_dim} interleaved={interleaved} start={start}"
    assert worst <= 1.0, f"{where}: error reaches {worst:.3f} of the bound"
    assert np.array_equal(heads, ref_rotate(x, cos, sin, start, rope_dim, interleaved)), f"{where}: not the f32 bits"
    assert np.array_equal(qkv[:, (n_heads + n_kv) * D:], before[:, (n_heads + n_kv) * D:]), f"{where}: v changed"


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("T", ROWS)
def test_rms_norm_within_bound(T, d):
    check_rms_norm(rms_norm, T, d, seed=T * 1000 + d)


@pytest.mark.parametrize("F_", [1536, 64, 1000, 999])
@pytest.mark.parametrize("T", ROWS)
def test_silu_mul_within_bound(T, F_):
    check_silu_mul(silu_mul, T, F_, seed=T * 1000 + F_)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "neox"])
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=lambda s: f"D{s[0]}-rope{s[1]}")
@pytest.mark.parametrize("T", ROWS)
def test_rope_on_fused_qkv_view(T, shape, interleaved):
    for start in (0, 37):
        check_rope(rotary_embedding_, T, *shape, interleaved, start, seed=T + shape[1] + start)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "neox"])
def test_rope_on_contiguous_heads_and_last_positions(interleaved):
    cos, sin = tables(64, positions=40)
    x = randn(8, 4, 64)
    y = x.copy()
    rotary_embedding_(y, cos, sin, 32, 64, interleaved)  # positions 32 .. 39: the table's last row
    assert np.array_equal(y, ref_rotate(x, cos, sin, 32, 64, interleaved))


def test_rows_do_not_depend_on_the_call():
    """One call over T rows == one call per row (and any thread count), bit for bit."""
    x, w = rows_with_varied_scales(513, 576, seed=1), randn(576, seed=2)
    gate_up = randn(513, 2 * 1536, seed=3)
    cos, sin = tables(64)
    qkv = fused_qkv(513, 9, 3, 64, seed=2)
    before = get_num_threads()
    try:
        for threads in (1, 2, 3):
            set_num_threads(threads)
            whole = rms_norm(x, w, 1e-5)
            assert np.array_equal(whole, np.concatenate([rms_norm(x[t:t + 1], w, 1e-5) for t in range(513)]))
            whole = silu_mul(gate_up)
            assert np.array_equal(whole, np.concatenate([silu_mul(gate_up[t:t + 1]) for t in range(513)]))
            for interleaved in (True, False):
                whole, rows = qkv.copy(), qkv.copy()
                rotary_embedding_(whole.reshape(513, 15, 64)[:, :12], cos, sin, 5, 64, interleaved)
                for t in range(513):
                    rotary_embedding_(rows[t:t + 1].reshape(1, 15, 64)[:, :12], cos, sin, 5 + t, 64, interleaved)
                assert np.array_equal(whole, rows)
    finally:
        set_num_threads(before)


def test_out_arguments_in_place_norm_and_zero_rows():
    x, w = randn(5, 64, seed=1), randn(64, seed=2)
    expected = rms_norm(x, w, 1e-5)
    out = np.full((5, 64), np.nan, np.float32)
    assert rms_norm(x, w, 1e-5, out) is out and np.array_equal(out, expected)
    assert rms_norm(x, w, 1e-5, x) is x and np.array_equal(x, expected)
    gate_up = randn(5, 128, seed=3)
    out = np.full((5, 64), np.nan, np.float32)
    assert silu_mul(gate_up, out) is out and np.array_equal(out, silu_mul(gate_up))
    assert rms_norm(np.empty((0, 64), np.float32), w, 1e-5).shape == (0, 64)
    assert silu_mul(np.empty((0, 128), np.float32)).shape == (0, 64)
    cos, sin = tables(64, positions=4)
    rotary_embedding_(np.empty((0, 3, 64), np.float32), cos, sin, 4, 64, True)  # no rows: no position is used


def test_read_only_inputs_are_accepted():
    """Inputs are only read: read-only x, weight, gate_up and tables work like writeable ones."""
    x, w, gate_up = randn(5, 64, seed=1), randn(64, seed=2), randn(5, 128, seed=3)
    assert np.array_equal(rms_norm(read_only(x.copy()), read_only(w.copy()), 1e-5), rms_norm(x, w, 1e-5))
    assert np.array_equal(silu_mul(read_only(gate_up.copy())), silu_mul(gate_up))
    cos, sin = tables(64, positions=8)
    a = randn(3, 2, 64, seed=4)
    b = a.copy()
    rotary_embedding_(a, cos, sin, 2, 64, True)
    rotary_embedding_(b, read_only(cos.copy()), read_only(sin.copy()), 2, 64, True)
    assert np.array_equal(a, b)


def _norm_args(**changes):
    args = {"x": randn(3, 64, seed=1), "weight": randn(64, seed=2), "eps": 1e-5, "out": None}
    args.update({name: change(args) for name, change in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes",
    [
        {"x": lambda a: a["x"].astype(np.float64)},
        {"x": lambda a: a["x"].tolist()},
        {"x": lambda a: a["x"][0]},
        {"x": lambda a: randn(64, 3).T},
        {"x": lambda a: randn(3, 0), "weight": lambda a: randn(0)},
        {"weight": lambda a: a["weight"][:63]},
        {"weight": lambda a: a["weight"].astype(np.float16)},
        {"weight": lambda a: randn(128)[::2]},
        {"eps": lambda a: "1e-5"},
        {"out": lambda a: np.empty((3, 63), np.float32)},
        {"out": lambda a: np.empty((64, 3), np.float32).T},
        {"out": lambda a: np.empty((3, 64), np.float64)},
        {"out": lambda a: read_only(np.empty((3, 64), np.float32))},
        {"out": lambda a: read_only(a["x"])},  # in place, but x is read-only
    ],
    ids=["x-float64", "x-list", "x-1d", "x-strided", "d-zero", "weight-shape", "weight-f16", "weight-strided",
         "eps-str", "out-shape", "out-strided", "out-dtype", "out-read-only", "in-place-read-only"],
)
def test_rms_norm_bad_arguments(changes):
    with pytest.raises(RequestError):
        rms_norm(**_norm_args(**changes))


def _rope_args(**changes):
    cos, sin = tables(64, positions=16)
    args = {"x": randn(3, 4, 64), "cos": cos, "sin": sin, "start": 0, "rope_dim": 64, "interleaved": True}
    args.update({name: change(args) for name, change in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes",
    [
        {"x": lambda a: a["x"].astype(np.float64)},
        {"x": lambda a: a["x"][0]},
        {"x": lambda a: randn(3, 64, 4).swapaxes(1, 2)},
        {"x": lambda a: randn(4, 3, 64).swapaxes(0, 1)},  # rows overlap heads: row stride 64 < 4 * 64
        {"x": lambda a: randn(3, 4, 128)[..., ::2]},
        {"x": lambda a: randn(3, 4, 32)},  # rope_dim > D
        {"x": lambda a: read_only(a["x"])},  # rotated in place
        {"x": lambda a: a["x"].tolist()},
        {"cos": lambda a: a["cos"].astype(np.float64)},
        {"cos": lambda a: a["cos"][:, :31]},
        {"sin": lambda a: a["sin"][:8]},
        {"sin": lambda a: randn(32, 16).T},
        {"rope_dim": lambda a: 63},
        {"rope_dim": lambda a: 0},
        {"rope_dim": lambda a: 64.0},
        {"start": lambda a: 14},  # positions 14 .. 16: past the 16-row table
        {"start": lambda a: -1},
        {"start": lambda a: 1.0},
        {"interleaved": lambda a: 1},
    ],
    ids=["x-float64", "x-2d", "x-strided-last", "x-rows-overlap", "x-every-other", "rope-dim-over-D", "x-read-only",
         "x-list", "cos-float64",
         "cos-width", "sin-rows", "sin-strided", "rope-dim-odd", "rope-dim-zero", "rope-dim-float", "past-table",
         "start-negative", "start-float", "interleaved-int"],
)
def test_rope_bad_arguments(changes):
    args = _rope_args(**changes)
    x_before = args["x"].copy() if isinstance(args["x"], np.ndarray) else None
    with pytest.raises(RequestError):
        rotary_embedding_(**args)
    if x_before is not None:
        assert np.array_equal(args["x"], x_before)


@pytest.mark.parametrize(
    "changes",
    [
        {"gate_up": lambda a: a["gate_up"].astype(np.float64)},
        {"gate_up": lambda a: a["gate_up"][:, :127]},
        {"gate_up": lambda a: a["gate_up"][:, :0]},
        {"gate_up": lambda a: randn(128, 3).T},
        {"gate_up": lambda a: a["gate_up"][0]},
        {"out": lambda a: np.empty((3, 128), np.float32)},
        {"out": lambda a: np.empty((64, 3), np.float32).T},
        {"out": lambda a: np.empty((3, 64), np.float16)},
        {"out": lambda a: "out"},
        {"out": lambda a: read_only(np.empty((3, 64), np.float32))},
    ],
    ids=["float64", "odd-columns", "no-columns", "strided", "1d", "out-shape", "out-strided", "out-dtype", "out-str",
         "out-read-only"],
)
def test_silu_mul_bad_arguments(changes):
    args = {"gate_up": randn(3, 128), "out": None}
    args.update({name: change(args) for name, change in changes.items()})
    with pytest.raises(RequestError):
        silu_mul(**args)


@pytest.fixture(scope="module", params=["x86-64-v3", "x86-64"], ids=["avx2", "portable-c"])
def fallback(request, tmp_path_factory):
    """csrc/elementwise.c built for an older ISA, as a plain library called through ctypes: its kernels with the
    same Python signatures (no argument checks; two threads)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() != "x86_64":
        pytest.skip("needs a C compiler on x86-64")
    lib_path = tmp_path_factory.mktemp(request.param) / "elementwise.so"
    sources = [str(CSRC / "elementwise.c"), str(CSRC / "pool.c")]
    cmd = [compiler, "-O3", f"-march={request.param}", "-std=c11", "-shared", "-fPIC", "-pthread"]
    subprocess.run([*cmd, *sources, "-o", str(lib_path), "-lm"], check=True)
    lib = ctypes.CDLL(str(lib_path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.rms_norm_run.argtypes = [ptr, ptr, ptr, i64, i64, ctypes.c_double, ctypes.c_int]
    lib.rope_run.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.silu_mul_run.argtypes = [ptr, ptr, i64, i64, ctypes.c_int]
    lib.route_run.argtypes = [ptr, i64, i64, i64, ctypes.c_int, ptr, ptr, ptr, ptr]
    lib.combine_experts_run.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]

    def norm(x, w, eps):
        out = np.empty_like(x)
        lib.rms_norm_run(x.ctypes.data, w.ctypes.data, out.ctypes.data, *x.shape, eps, 2)
        return out

    def rotate(x, cos, sin, start, rope_dim, interleaved):
        lib.rope_run(x.ctypes.data, x.strides[0] // x.itemsize, *x.shape, cos.ctypes.data, sin.ctypes.data, start,
                     rope_dim, interleaved, 2)

    def silu(gate_up):
        out = np.empty((gate_up.shape[0], gate_up.shape[1] // 2), np.float32)
        lib.silu_mul_run(gate_up.ctypes.data, out.ctypes.data, *out.shape, 2)
        return out

    def route(logits, top_k, normalize):
        ids, weights = np.empty((len(logits), top_k), np.int64), np.empty((len(logits), top_k), np.float32)
        shifted, taken = np.empty(logits.shape[1], np.float64), np.empty(logits.shape[1], np.uint8)
        lib.route_run(logits.ctypes.data, *logits.shape, top_k, normalize, shifted.ctypes.data, taken.ctypes.data,
                      ids.ctypes.data, weights.ctypes.data)
        return ids, weights

    def combine(rows, weights, order):
        out, slots = np.empty((len(weights), rows.shape[1]), np.float32), np.argsort(order)  # slots: each pair's row
        lib.combine_experts_run(rows.ctypes.data, weights.ctypes.data, slots.ctypes.data, out.ctypes.data,
                                *weights.shape, rows.shape[1], 2)
        return out

    return norm, rotate, silu, route, combine


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
def test_fallback_isas_within_bound_and_invariant(fallback):
    norm, rotate, silu, route, combine = fallback
    for T, d in [(1, 576), (513, 999), (3, 64)]:
        check_rms_norm(norm, T, d, seed=d)
        check_silu_mul(silu, T, d, seed=d)
    for T, shape, interleaved in [(1, (64, 64), True), (64, (48, 20), True), (513, (64, 32), False),
                                  (3, (128, 128), False)]:
        check_rope(rotate, T, *shape, interleaved, 11, seed=T)
    x, w = rows_with_varied_scales(200, 999, seed=3), randn(999, seed=4)
    assert np.array_equal(norm(x, w, 1e-5), np.concatenate([norm(x[t:t + 1], w, 1e-5) for t in range(200)]))
    for n, k, d in [(1, 8, 2048), (300, 4, 999)]:
        logits = randn(n, 64, seed=n) * 4
        ids, weights = route(logits, k, True)
        exact_ids, exact_weights = exact_route(logits, k, True)
        np.testing.assert_array_equal(ids, exact_ids)
        assert np.all(np.abs(weights - exact_weights) <= U * exact_weights)
        rows, order = randn(n * k, d, seed=k), np.argsort(ids, axis=None, kind="stable")
        np.testing.assert_array_equal(combine(rows, weights, order), formulas.combine_experts(rows, weights, order))
