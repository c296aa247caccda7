"""The attention kernel against torch's SDPA in float64, within its documented bound; and its invariance: a row's
result is the same bits whatever the number of rows in the call and the number of threads.

The installed extension is built for this machine's best ISA; the AVX2 and portable C paths of csrc/attention.c are
built here too (-march=x86-64-v3 and -march=x86-64, as a plain library called through ctypes) and checked the same way.
"""

import ctypes
import math
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from deeproots.errors import RequestError
from deeproots.kernels import cached_attention, get_num_threads, set_num_threads

U = 2.0**-24  # f32 unit roundoff
CSRC = Path(__file__).resolve().parents[2] / "deeproots" / "kernels" / "csrc"
HEADS = [(9, 3), (8, 8), (4, 1)]  # (n_heads, n_kv_heads)
CACHE = 320  # positions the test cache holds: k and v are views with a head stride larger than L * D


def make_inputs(n_heads: int, n_kv: int, T: int, L: int, D: int, dtype: torch.dtype, seed: int):
    """q (n_heads, T, D) as the model's transposed view of (T, n_heads, D); k, v (n_kv, L, D) views into a cache."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, n_heads, D, generator=g).transpose(0, 1) * 1.5
    k = (torch.randn(n_kv, CACHE, D, generator=g) * 1.5).to(dtype)[:, :L]
    v = torch.randn(n_kv, CACHE, D, generator=g).to(dtype)[:, :L]
    return q, k, v


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA in float64 on the same (f16-rounded, where so) values: (T, n_heads * D)."""
    T, L = q.shape[1], k.shape[1]
    mask = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)
    out = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.transpose(0, 1).reshape(T, -1)


def error_bound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The bound documented in deeproots/kernels/attention.py, per output (T, n_heads * D)."""
    (H, T, D), (G, L, _) = q.shape, k.shape
    gamma = lambda m: m * U / (1 - m * U)  # noqa: E731
    qd = q.double()
    kd = k.double().repeat_interleave(H // G, dim=0)  # (H, L, D)
    vd = v.double().repeat_interleave(H // G, dim=0).abs()
    n = torch.arange(L - T + 1, L + 1, dtype=torch.float64)  # keys per row
    visible = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)
    scores = (qd @ kd.transpose(1, 2) * scale).masked_fill(~visible, -math.inf)  # (H, T, L)
    p = scores.softmax(-1)
    delta = (gamma(D + 2) * abs(scale) * (qd.abs() @ kd.abs().transpose(1, 2))).masked_fill(~visible, 0)
    delta = delta.amax(-1, keepdim=True)  # (H, T, 1)
    vmax = torch.stack([vd[:, : int(m)].amax(1) for m in n], dim=1)  # (H, T, D): max |v| over each row's keys
    bound = 2.02 * delta * (p @ vd) + ((3 * n + 24) * U)[None, :, None] * vmax
    return bound.transpose(0, 1).reshape(T, -1)


def check(attend, n_heads: int, n_kv: int, T: int, L: int, D: int, dtype: torch.dtype, seed: int) -> None:
    q, k, v = make_inputs(n_heads, n_kv, T, L, D, dtype, seed)
    scale = 1.0 / math.sqrt(D)
    out = attend(q, k, v, scale)
    assert out.shape == (T, n_heads * D) and out.dtype == torch.float32 and out.is_contiguous()
    err = (out.double() - reference(q, k, v, scale)).abs()
    worst = (err / error_bound(q, k, v, scale)).max().item()
    assert worst <= 1.0, f"H={n_heads}/{n_kv} T={T} L={L} D={D} {dtype}: error reaches {worst:.3f} of the bound"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("D", [64, 128, 40])
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}x{h[1]}")
@pytest.mark.parametrize("T", [1, 3, 8, 33])
def test_matches_sdpa_within_bound(T, heads, D, dtype):
    for i, L in enumerate(sorted({T, T + 1, T + 64, 300})):  # 64: a chunk of keys ends exactly at the last one
        check(cached_attention, *heads, T, L, D, dtype, seed=1000 * T + 10 * D + i)


def test_bound_is_tight_enough_to_mean_something():
    """A few 1e-4 of max |v| at L=300, where dropping a single key moves the output past it."""
    q, k, v = make_inputs(9, 3, 8, 300, 64, torch.float32, seed=1)
    bound = error_bound(q, k, v, 0.125)
    assert bound.max() < 3e-4 * v.abs().max()
    keep = torch.arange(300) != 150
    dropped = reference(q, k[:, keep], v[:, keep], 0.125)
    assert ((cached_attention(q, k, v, 0.125).double() - dropped).abs() > bound).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("D", [64, 40])
def test_rows_do_not_depend_on_the_call(D, dtype):
    """Prefill in one call == any split into calls over a growing cache (each with the right L) == one row at a time."""
    L = 300
    q, k, v = make_inputs(9, 3, L, L, D, dtype, seed=D)
    whole = cached_attention(q, k, v, 0.125)
    for cuts in ([0, 5, 70, 71, 200, 300], [0, 1, 2, 64, 65, 129, 300], list(range(0, 301, 20)), list(range(L + 1))):
        parts = [cached_attention(q[:, a:b], k[:, :b], v[:, :b], 0.125) for a, b in zip(cuts, cuts[1:])]
        assert torch.equal(torch.cat(parts), whole), f"cuts {cuts[:8]}..."


def test_thread_counts_give_identical_results():
    q, k, v = make_inputs(9, 3, 33, 300, 64, torch.float32, seed=2)
    before = get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            set_num_threads(threads)
            results.append(cached_attention(q, k, v, 0.125))
    finally:
        set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_writes_into_out_and_handles_zero_rows():
    q, k, v = make_inputs(4, 1, 3, 10, 64, torch.float32, seed=3)
    out = torch.full((3, 256), float("nan"))
    assert cached_attention(q, k, v, 0.125, out) is out
    assert torch.equal(out, cached_attention(q, k, v, 0.125))
    assert cached_attention(q[:, :0], k, v, 0.125).shape == (0, 256)


def test_contiguous_inputs_give_the_same_bits_as_views():
    q, k, v = make_inputs(8, 8, 5, 40, 128, torch.float16, seed=4)
    assert torch.equal(cached_attention(q, k, v, 0.1), cached_attention(q.contiguous(), k.contiguous(), v.contiguous(), 0.1))


def _args(**changes):
    q, k, v = make_inputs(4, 2, 3, 10, 16, torch.float32, seed=5)
    args = {"q": q, "k": k, "v": v, "scale": 0.25, "out": None}
    args.update({name: change(args) for name, change in changes.items()})
    return args


@pytest.mark.parametrize(
    "changes",
    [
        {"q": lambda a: a["q"].double()},
        {"q": lambda a: a["q"][0]},
        {"q": lambda a: a["q"].transpose(1, 2)},
        {"q": lambda a: a["q"][:, :, :8]},
        {"q": lambda a: a["q"][:3]},
        {"q": lambda a: torch.randn(4, 11, 16)},
        {"q": lambda a: a["q"].tolist()},
        {"k": lambda a: a["k"].half()},
        {"k": lambda a: a["k"].bfloat16(), "v": lambda a: a["v"].bfloat16()},
        {"v": lambda a: a["v"][:, :9]},
        {"k": lambda a: a["k"][:, :, :0], "v": lambda a: a["v"][:, :, :0], "q": lambda a: a["q"][:, :, :0]},
        {"k": lambda a: a["k"][:0], "v": lambda a: a["v"][:0]},
        {"scale": lambda a: "0.25"},
        {"out": lambda a: torch.empty(3, 63)},
        {"out": lambda a: torch.empty(64, 3).T},
        {"out": lambda a: torch.empty(3, 64, dtype=torch.float64)},
    ],
    ids=["q-float64", "q-2d", "q-strided-last", "q-D-mismatch", "heads-not-multiple", "T-over-L", "q-list",
         "kv-dtypes-differ", "kv-bf16", "kv-shapes-differ", "D-zero", "no-kv-heads", "scale-str", "out-shape",
         "out-strided", "out-dtype"],
)
def test_bad_arguments_raise_request_error(changes):
    with pytest.raises(RequestError):
        cached_attention(**_args(**changes))


class _Attn(ctypes.Structure):  # attn_t in csrc/attention.h
    _fields_ = [("q", ctypes.c_void_p), ("q_head", ctypes.c_int64), ("q_row", ctypes.c_int64),
                ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("k_head", ctypes.c_int64),
                ("k_row", ctypes.c_int64), ("v_head", ctypes.c_int64), ("v_row", ctypes.c_int64),
                ("kv_type", ctypes.c_int), ("n_heads", ctypes.c_int64), ("n_kv_heads", ctypes.c_int64),
                ("T", ctypes.c_int64), ("L", ctypes.c_int64), ("D", ctypes.c_int64), ("scale", ctypes.c_float),
                ("out", ctypes.c_void_p)]


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
    lib = ctypes.CDLL(str(lib_path))
    lib.attention_run.argtypes = [ctypes.POINTER(_Attn), ctypes.c_int]

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, threads: int = 2) -> torch.Tensor:
        (H, T, D), (G, L, _) = q.shape, k.shape
        out = torch.empty(T, H * D)
        args = _Attn(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
                     v.stride(0), v.stride(1), 0 if k.dtype == torch.float32 else 1, H, G, T, L, D, scale,
                     out.data_ptr())
        lib.attention_run(ctypes.byref(args), threads)
        return out

    return attend


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_fallback_isas_match_sdpa_and_stay_invariant(fallback_attention, dtype):
    for heads, T, L, D in [((9, 3), 1, 17, 64), ((8, 8), 8, 100, 128), ((4, 1), 33, 300, 40)]:
        check(fallback_attention, *heads, T, L, D, dtype, seed=T + D)
    q, k, v = make_inputs(9, 3, 130, 130, 40, dtype, seed=6)
    whole = fallback_attention(q, k, v, 0.125, threads=1)
    parts = [fallback_attention(q[:, a:b], k[:, :b], v[:, :b], 0.125) for a, b in [(0, 1), (1, 65), (65, 130)]]
    assert torch.equal(torch.cat(parts), whole)
