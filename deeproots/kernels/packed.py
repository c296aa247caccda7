"""Packed weights and the quantized linear product over them: the Python face of the compiled CPU core.

    w = pack_weight(raw, ggml_type, (K, N))   # once, at load: raw GGUF bytes -> the kernel's layout
    y = quantized_linear(x, w)                # x (T, K) float32 -> y (T, N) = x @ W.T, float32

Block-quantized weights are multiplied without ever being expanded to floats: activations are quantized per block of
32 to int8 (scale = max|x| / 127), dotted in int8 against the weights' integer values, and scaled in f32. Relative to
x @ W.T in exact arithmetic the error of output (t, n) is at most
    sum over blocks b of  max|x[t, b]| / 254 * sum_{i in b} |w[n, i]|      (rounding x to the int8 grid)
plus f32 accumulation error (~1e-6 relative to |x| @ |W|.T). The block-minimum term of Q4_1 / Q4_K / Q5_K is
multiplied by the sum of the *quantized* block (d * sum(q), as llama.cpp's Q8_1 does), not the exact sum of x: the
weight w = d*q + m is centred near zero while d*q alone is not, so the two rounding terms cancel; on the default
model's Q4_1 weights the exact sum gave 2.3x the relative error. F32 / F16 / BF16 weights are multiplied in f32
without quantizing x.

AMX: where the CPU has AMX-INT8 and the kernel grants the tile state (AMX_STATUS), products of at least
`_cpu.AMX_MIN_TOKENS` (16) tokens run whole 16-token tiles on AMX (csrc/qgemm_amx.c) and the rest on AVX-512 VNNI.
Both paths give every output the same bits (the same exact integer block sums, scaled and summed in the same order),
so a row's result never depends on the batch it came in: prefill on AMX and decode on VNNI agree. DEEPROOTS_AMX=0
in the environment, or set_amx(False), keeps the VNNI path for everything.

Threads: a call splits its output rows over up to `set_num_threads` threads (default: `physical_cores()`, the
physical cores this process may run on), the calling thread included, from the extension's own small pool (csrc/pool.c):
a fork-join there costs a few hundred nanoseconds, where OpenMP's cost ~2 us against the ~5-30 us of one decode-step
product. Parts of a call are claimed by whichever thread is running, so a worker preempted by another process
costs its share of the work, not a scheduler time slice. Workers spin for 0.2 ms after a call, yielding the core to
any other runnable thread every few microseconds, then sleep: they do not hold a core away from other threads.
Small products run on fewer threads (one below ~64 blocks of 16 rows x 32 values). The GIL is released while a
product runs.
"""

import os
from typing import Sequence

import numpy as np

from ..errors import DeeprootsError, ModelFormatError, RequestError, UnsupportedModelError
from ..quant.types import BLOCK_GEOMETRY, GGMLType, tensor_nbytes
from . import _cpu
from .outputs import F32 as _F32, bad_array, bad_contiguous, output_buffer
from .layouts import pack_float, pack_quantized

_QUANT_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K,
                          GGMLType.Q6_K})
_FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})
_linear = _cpu.linear  # looked up once: the decode path calls it ~200 times per token
_linear_experts = _cpu.linear_experts


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on: distinct (package, core) pairs in /sys's topology, so
    hyperthread siblings count once (they share a core's SIMD units, which the kernels saturate). Where the topology
    cannot be read, the number of CPUs the process may run on."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    try:
        for cpu in cpus:
            topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(topology + "physical_package_id") as package, open(topology + "core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
    except OSError:
        return len(cpus)
    return len(cores) or len(cpus)


MAX_THREADS = _cpu.MAX_THREADS  # the most threads set_num_threads takes (512)
_cpu.set_num_threads(min(physical_cores(), MAX_THREADS))


class PackedWeight:
    """A weight matrix W (N = out_features, K = in_features) in the kernel's layout; immutable once built."""

    __slots__ = ("ggml_type", "in_features", "out_features", "data", "_type")

    def __init__(self, ggml_type: GGMLType, in_features: int, out_features: int, data: np.ndarray):
        self.ggml_type = ggml_type
        self.in_features = in_features
        self.out_features = out_features
        self.data = data  # uint8, 64-byte aligned; owns the packed bytes
        self.data.flags.writeable = False
        self._type = int(ggml_type)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __repr__(self) -> str:
        return (
            f"PackedWeight({self.ggml_type.name}, in_features={self.in_features}, "
            f"out_features={self.out_features}, nbytes={self.nbytes})"
        )


def kernel_types() -> frozenset[int]:
    """GGML types that pack_weight accepts (each has a compiled kernel)."""
    return _QUANT_TYPES | _FLOAT_TYPES


def set_num_threads(n: int) -> None:
    """Threads the kernels use from now on: an int in [1, MAX_THREADS]."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_THREADS:
        raise RequestError(f"set_num_threads needs an int in [1, {MAX_THREADS}], got {n!r}")
    _cpu.set_num_threads(n)


def get_num_threads() -> int:
    return _cpu.get_num_threads()


AMX_STATUS = _cpu.AMX  # "amx-int8" where this CPU and kernel run AMX, else "off: <what is missing>"
AMX_EMULATION_BUILT = bool(_cpu.AMX_EMULATION_BUILT)  # the AMX path compiled over software tiles (emulate_amx)


def amx_enabled() -> bool:
    """Whether products of at least `_cpu.AMX_MIN_TOKENS` tokens run on AMX-INT8 (csrc/qgemm_amx.c): by default
    where AMX_STATUS is "amx-int8" and the environment has no DEEPROOTS_AMX=0. Both paths give the same bits."""
    return _cpu.get_amx_min_tokens() > 0


def emulate_amx(enabled: bool) -> None:
    """Run the AMX path's own code (csrc/qgemm_amx.c) with its tile instructions done in C (csrc/amx_emulated.h),
    or stop: where this build has AVX-512 but not the AMX instructions (AMX_EMULATION_BUILT). Slow; for testing the
    AMX path's tiling, tails and bits on CPUs without AMX. Off again means the VNNI path for every product."""
    if not isinstance(enabled, bool):
        raise RequestError(f"emulate_amx needs a bool, got {enabled!r}")
    if not AMX_EMULATION_BUILT:
        raise UnsupportedModelError(f"AMX emulation is not built here ({_cpu.ISA}; AMX {AMX_STATUS})")
    _cpu.set_amx_emulation(int(enabled))
    if enabled:
        _cpu.set_amx_min_tokens(_cpu.AMX_MIN_TOKENS)


def set_amx(enabled: bool) -> None:
    """Switch AMX on (where AMX_STATUS allows) or off (the AVX-512 VNNI path for every product), e.g. to compare."""
    if not isinstance(enabled, bool):
        raise RequestError(f"set_amx needs a bool, got {enabled!r}")
    if enabled and AMX_STATUS != "amx-int8" and not _cpu.get_amx_emulation():
        raise UnsupportedModelError(f"AMX cannot run here: {AMX_STATUS}")
    _cpu.set_amx_min_tokens(_cpu.AMX_MIN_TOKENS if enabled else 0)


def kernel_path() -> str:
    """The products' instruction set, for `deeproots bench` and --verbose: e.g. "avx512-vnni + amx-int8"."""
    if amx_enabled():
        emulated = ", emulated" if _cpu.get_amx_emulation() else ""
        return f"{_cpu.ISA} + amx-int8 (>= {_cpu.get_amx_min_tokens()} tokens{emulated})"
    usable = AMX_STATUS == "amx-int8" or _cpu.get_amx_emulation()
    return f"{_cpu.ISA} (amx {'switched off' if usable else AMX_STATUS.removeprefix('off: ')})"


def pack_weight(raw: np.ndarray | Sequence[np.ndarray], ggml_type: int, shape: tuple[int, int]) -> PackedWeight:
    """Repack a weight's GGUF bytes for the kernels.

    raw: the tensor's bytes as stored in the file (any dtype view, C-contiguous; e.g. GGUFReader's `.data`), or a
    list of such tensors whose rows stack into the weight (q, k and v; gate and up), packed with no concatenated copy.
    shape: GGUF order (K, N): K = in_features = row length, N = out_features = rows (of all parts together).
    """
    try:
        ggml_type = GGMLType(ggml_type)
    except ValueError:
        raise UnsupportedModelError(f"unknown GGML type id {ggml_type!r}") from None
    if ggml_type not in kernel_types():
        names = ", ".join(sorted(t.name for t in kernel_types()))
        raise UnsupportedModelError(f"no CPU kernel for {ggml_type.name} weights (have: {names}); dequantize it first")
    if len(shape) != 2 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
        raise ModelFormatError(f"weight shape must be two positive ints (K, N), got {shape!r}")
    k, n = int(shape[0]), int(shape[1])
    block = BLOCK_GEOMETRY[ggml_type].block_size
    if k % block:
        raise ModelFormatError(f"{ggml_type.name} rows must be a multiple of {block} values, got K={k}")
    parts = [raw] if isinstance(raw, np.ndarray) else list(raw)
    if not parts or not all(isinstance(part, np.ndarray) and part.flags.c_contiguous for part in parts):
        raise ModelFormatError("weight bytes must be C-contiguous numpy arrays")
    expected, row_bytes = tensor_nbytes(ggml_type, k * n), tensor_nbytes(ggml_type, k)
    if sum(part.nbytes for part in parts) != expected or any(part.nbytes % row_bytes for part in parts):
        raise ModelFormatError(f"{ggml_type.name} weight of shape {(k, n)} needs {expected} bytes in whole rows of "
                               f"{row_bytes}, got {[part.nbytes for part in parts]}")
    rows = [part.reshape(-1).view(np.uint8).reshape(-1, row_bytes) for part in parts]  # (n_i, row_bytes) each
    if ggml_type in _FLOAT_TYPES:
        data = pack_float(rows)
    else:
        data = pack_quantized(rows, ggml_type, n, k, _cpu.group_bytes(int(ggml_type), k))
    if data.nbytes != packed_nbytes(ggml_type, k, n):
        raise DeeprootsError(f"internal error: packed {ggml_type.name} size disagrees with the kernel's layout")
    return PackedWeight(ggml_type, k, n, data)


def packed_nbytes(ggml_type: int, in_features: int, out_features: int) -> int:
    """Bytes of a packed weight: the file's for float types, whole 16-row groups for block formats (-1: no kernel
    for this type and row length)."""
    if ggml_type in _FLOAT_TYPES:
        return tensor_nbytes(GGMLType(ggml_type), in_features * out_features)
    group_bytes = _cpu.group_bytes(int(ggml_type), in_features) if ggml_type in _QUANT_TYPES else -1
    return -(-out_features // _cpu.ROWS) * group_bytes if group_bytes > 0 else -1


def _bad_input(x: object, weight: PackedWeight, out: object) -> RequestError:
    """The first thing wrong with quantized_linear's arguments (only built on the failure path)."""
    if not isinstance(weight, PackedWeight):
        return RequestError(f"weight must be a PackedWeight (from pack_weight), got {type(weight).__name__}")
    k, n = weight.in_features, weight.out_features
    error = bad_array("x", x, 2) or bad_contiguous("x", x, (x.shape[0], k))
    if error is None and out is not None:
        error = bad_array("out", out, 2) or bad_contiguous("out", out, (x.shape[0], n), writeable=True)
    return error or RequestError("bad arguments to quantized_linear")


def quantized_linear(x: np.ndarray, weight: PackedWeight, out: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) = x (T, K) @ W.T in float32; written into `out` (T, N) when given, which then is returned.

    x and out: float32 numpy arrays, C-contiguous, not overlapping. The error bound is in this module's docstring.
    """
    # One fused check (numpy attribute reads cost ~50 ns each; decode makes ~200 calls per token).
    try:
        t, k = x.shape
        ok = k == weight.in_features and x.dtype == _F32 and x.flags.c_contiguous
        result = output_buffer(ok, out, t, weight.out_features)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_input(x, weight, out)
    _linear(weight._type, weight.data, weight.out_features, k, x, t, result)
    return result


def experts_linear(x: np.ndarray, weights: tuple[PackedWeight, ...], starts: np.ndarray,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """y (M, N): rows starts[j]:starts[j + 1] of x (M, K) times weights[j] (all of one type and shape), for every j,
    in one threaded call: each row gets the bits quantized_linear gives it alone (same kernels, same error bound).

    x: float32, C-contiguous; starts: (len(weights) + 1,) int64 from 0 to M, never decreasing. rows: None, or (M,)
    int64 indices into x (T, K): y's row i is then the product of x[rows[i]], as experts_linear(x[rows], ...) gives
    it, without the copy (a mixture's k experts of one token read its row, quantized once).
    """
    first = weights[0] if isinstance(weights, tuple) and weights else None
    if not isinstance(first, PackedWeight) or any(
            not isinstance(w, PackedWeight) or (w._type, w.in_features, w.out_features) !=
            (first._type, first.in_features, first.out_features) for w in weights):
        raise RequestError("weights must be a non-empty tuple of PackedWeights of one type and shape")
    error = bad_array("x", x, 2) or bad_contiguous("x", x, (x.shape[0], first.in_features))
    if error is None and rows is not None and (not isinstance(rows, np.ndarray) or rows.dtype != np.int64
                                               or rows.ndim != 1 or np.any(rows < 0) or np.any(rows >= x.shape[0])):
        error = RequestError(f"rows must be a 1-d int64 array of row indices into x's {x.shape[0]} rows")
    m = None if error is not None else x.shape[0] if rows is None else rows.shape[0]  # the product's rows
    if error is None and (not isinstance(starts, np.ndarray) or starts.dtype != np.int64
                          or starts.shape != (len(weights) + 1,) or starts[0] != 0 or starts[-1] != m
                          or np.any(np.diff(starts) < 0)):
        error = RequestError(f"starts must be {len(weights) + 1} int64 row offsets from 0 to {m}")
    if error is not None:
        raise error
    return grouped_product(first, tuple(w.data for w in weights), x, np.ascontiguousarray(starts),
                           None if rows is None else np.ascontiguousarray(rows))


def grouped_product(like: PackedWeight, datas: tuple[np.ndarray, ...], x: np.ndarray, starts: np.ndarray,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """experts_linear without its Python checks, for callers whose weights are the packed bytes (`datas`) of
    experts known to share `like`'s type and shape (backends.linears.PackedExperts: decode calls it twice a layer).
    The C entry still checks every buffer's type, size, the row offsets and the row indices. Float weights take x's
    rows gathered here (the C core indexes quantized rows only)."""
    if rows is not None and like._type in _FLOAT_TYPES:
        x, rows = x[rows], None
    out = np.empty((int(starts[-1]), like.out_features), np.float32)
    _linear_experts(like._type, datas, like.out_features, like.in_features, x, starts, out, rows)
    return out
