"""The compiled packed-weight products against the float64 reference, within their documented error bound.

The installed extension is built for this machine's best ISA; the AVX2 and portable C paths are built here too
(with -march=x86-64-v3 and -march=x86-64) and run through the same checks.
"""

import importlib.machinery
import importlib.util
import os
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from deeproots.errors import ModelFormatError, RequestError, UnsupportedModelError
from deeproots.kernels import (
    PackedWeight,
    get_num_threads,
    kernel_types,
    pack_weight,
    quantized_linear,
    set_num_threads,
)
from deeproots.kernels.packed import physical_cores
from deeproots.kernels.reference import reference_linear
from deeproots.quant import dequantize
from deeproots.quant.types import BLOCK_GEOMETRY, GGMLType

Q = GGMLType
# byte offsets of each block's f16 scale fields, which random bytes must keep finite
SCALE_FIELDS = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q8_0: (0,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2),
                Q.Q6_K: (208,)}
# formats whose weight is (integer part) + (block minimum): the bytes holding the integer part
MIN_FORMAT_QUANTS = {Q.Q4_1: slice(4, 20), Q.Q4_K: slice(16, 144), Q.Q5_K: slice(16, 176)}
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
ROW_LENGTHS = {t: (32, 96, 576) for t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0)}
ROW_LENGTHS.update({t: (256, 768) for t in (Q.Q4_K, Q.Q5_K, Q.Q6_K)})
ROW_LENGTHS.update({t: (1, 17, 576) for t in FLOAT_TYPES})
U = 2.0**-24  # f32 unit roundoff
CSRC = Path(__file__).resolve().parents[2] / "deeproots" / "kernels" / "csrc"


def random_raw(ggml_type: GGMLType, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random (n, row_bytes) weight: random bytes, with finite f16 scales of a realistic size."""
    if ggml_type in FLOAT_TYPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        if ggml_type == Q.F16:
            w = w.astype(np.float16)
        elif ggml_type == Q.BF16:
            w = (w.view(np.uint32) >> 16).astype(np.uint16)
        return w.view(np.uint8).reshape(n, -1)
    geometry = BLOCK_GEOMETRY[ggml_type]
    raw = rng.integers(0, 256, (n, k // geometry.block_size, geometry.type_size), dtype=np.uint8)
    for offset in SCALE_FIELDS[ggml_type]:
        scales = (rng.standard_normal(raw.shape[:2]) * 0.01).astype(np.float16)
        raw[..., offset : offset + 2] = scales[..., None].view(np.uint8)
    return raw.reshape(n, -1)


def error_bound(x: np.ndarray, raw: np.ndarray, ggml_type: GGMLType, k: int, n: int) -> np.ndarray:
    """The bound documented in deeproots/kernels/packed.py, per output (T, N)."""
    xd = np.abs(x.astype(np.float64))  # (T, K)
    w = dequantize(raw.reshape(-1), ggml_type, (k, n)).astype(np.float64)  # (N, K)
    gamma = lambda m: m * U / (1 - m * U)  # noqa: E731  (f32 summation of m terms, any order)
    if ggml_type in FLOAT_TYPES:
        return gamma(k + 1) * (xd @ np.abs(w).T)
    minimum = np.zeros_like(w)
    if ggml_type in MIN_FORMAT_QUANTS:
        blocks = raw.reshape(n, -1, BLOCK_GEOMETRY[ggml_type].type_size).copy()
        blocks[..., MIN_FORMAT_QUANTS[ggml_type]] = 0
        minimum = dequantize(blocks.reshape(-1), ggml_type, (k, n)).astype(np.float64)
    c = np.abs(w - minimum)  # the part multiplied by the integer value
    amax = xd.reshape(len(x), k // 32, 32).max(-1)  # (T, nb)
    # Minimums meet the quantized block sum too, so the whole weight meets the rounding of x.
    rounding = (amax / 254) @ np.abs(w).reshape(n, k // 32, 32).sum(-1).T * (1 + 1e-5)
    magnitude = np.repeat(amax, 32, axis=1) @ (c + np.abs(minimum)).T + xd @ np.abs(minimum).T
    return rounding + gamma(k + 64) * magnitude


def check(ggml_type: GGMLType, t: int, k: int, n: int, seed: int, linear=quantized_linear) -> None:
    rng = np.random.default_rng(seed)
    raw = random_raw(ggml_type, k, n, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    check_raw(ggml_type, raw, x, linear)


def check_raw(ggml_type: GGMLType, raw: np.ndarray, x: np.ndarray, linear=quantized_linear) -> None:
    (t, k), n = x.shape, raw.shape[0]
    y = linear(x, pack_weight(raw, ggml_type, (k, n)))
    assert y.shape == (t, n) and y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - reference_linear(x, raw, ggml_type, (k, n)))
    bound = error_bound(x, raw, ggml_type, k, n)
    worst = (err / bound).max()
    assert worst <= 1.0, f"{ggml_type.name} T={t} K={k} N={n}: error reaches {worst:.3f} of the bound"


@pytest.mark.parametrize("ggml_type", sorted(kernel_types()), ids=lambda t: GGMLType(t).name)
@pytest.mark.parametrize("t", [1, 2, 7, 64])
@pytest.mark.parametrize("n", [1, 3, 17, 576])
def test_matches_reference_within_bound(ggml_type, t, n):
    for i, k in enumerate(ROW_LENGTHS[GGMLType(ggml_type)]):
        check(GGMLType(ggml_type), t, k, n, seed=1000 * ggml_type + 100 * t + n + i)


@pytest.fixture(scope="module", params=["x86-64-v3", "x86-64"], ids=["avx2", "portable-c"])
def fallback_linear(request, tmp_path_factory):
    """quantized_linear through the extension built for an older ISA (same packed layout)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() != "x86_64":
        pytest.skip("needs a C compiler on x86-64")
    out = tmp_path_factory.mktemp(request.param) / ("_cpu" + importlib.machinery.EXTENSION_SUFFIXES[0])
    include = sysconfig.get_paths()["include"]
    sources = [str(p) for p in sorted(CSRC.glob("*.c"))]
    cmd = [compiler, "-O2", f"-march={request.param}", "-std=c11", "-shared", "-fPIC", "-pthread", f"-I{include}"]
    subprocess.run([*cmd, *sources, "-o", str(out), "-lm"], check=True)
    spec = importlib.util.spec_from_file_location("_cpu", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ISA == {"x86-64-v3": "avx2", "x86-64": "portable-c"}[request.param]
    module.set_num_threads(2)

    def linear(x: np.ndarray, weight: PackedWeight) -> np.ndarray:
        out = np.empty((x.shape[0], weight.out_features), np.float32)
        module.linear(int(weight.ggml_type), weight.data, weight.out_features, weight.in_features, x, x.shape[0], out)
        return out

    linear.module = module  # the build itself, for its other entry points (the bandwidth probe's reads)
    return linear


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
@pytest.mark.parametrize("nbytes", [0, 13, 4096 + 72, 1 << 20])
def test_fallback_isas_read_every_byte(fallback_linear, nbytes):
    """csrc/memread.c's AVX2 and portable loops: the checksum is the XOR of every whole 64-bit word."""
    buffer = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    words = buffer[: nbytes // 8 * 8].view(np.uint64)
    assert fallback_linear.module.read_bytes(buffer) == (int(np.bitwise_xor.reduce(words)) if words.size else 0)


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
def test_fallback_isas_do_their_int8_probe(fallback_linear):
    """csrc/int8probe.c's AVX2 step does 256 multiply-adds of 1 x 2 per accumulator, 4 accumulators a round, on each
    of the build's 2 threads (the lane sums count the operations); the portable build has no probe and says so."""
    module = fallback_linear.module
    per_round = {"avx2": 4 * 256 * 2, "portable-c": 0}[module.ISA]
    assert module.INT8_PROBE_OPS_PER_ROUND == per_round
    assert module.int8_probe(1000) == 2 * 1000 * per_round


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
@pytest.mark.parametrize("ggml_type", sorted(kernel_types()), ids=lambda t: GGMLType(t).name)
def test_fallback_isas_match_reference_within_bound(fallback_linear, ggml_type):
    for t, n in [(1, 17), (5, 3), (9, 40)]:
        for i, k in enumerate(ROW_LENGTHS[GGMLType(ggml_type)]):
            check(GGMLType(ggml_type), t, k, n, seed=7 * ggml_type + 100 * t + n + i, linear=fallback_linear)


def q5_0_as_q8_0_outputs(linear, t: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One Q5_0 product through `linear`, run as Q5_0 and as the Q8_0 blocks of the same values that the CPU ran
    Q5_0 weights as before they had a kernel of their own: (as Q5_0, as Q8_0)."""
    from deeproots.quant.legacy import q5_0_as_q8_0

    rng = np.random.default_rng(seed)
    raw = random_raw(Q.Q5_0, k, n, rng)
    x = rng.standard_normal((t, k)).astype(np.float32)
    return (linear(x, pack_weight(raw, Q.Q5_0, (k, n))),
            linear(x, pack_weight(q5_0_as_q8_0(raw.reshape(-1)).reshape(n, -1), Q.Q8_0, (k, n))))


@pytest.mark.parametrize("t", [1, 2, 7, 16, 64])
def test_q5_0_gives_the_bits_of_its_q8_0_widening(t):
    """Q5_0's kernel sums the same exact integers as Q8_0's over the widened blocks (q - 16) and scales them with the
    same float operations, so packing Q5_0 as itself (22 bytes a block, not 34) changes no output bit."""
    for k, n in [(32, 3), (576, 40), (1408, 83)]:
        as_q5_0, as_q8_0 = q5_0_as_q8_0_outputs(quantized_linear, t, k, n, seed=t + k + n)
        assert np.array_equal(as_q5_0, as_q8_0)


@pytest.mark.slow  # compiles the extension twice more (AVX2, portable C)
def test_fallback_isas_give_q5_0_the_bits_of_its_q8_0_widening(fallback_linear):
    for t, k, n in [(1, 576, 17), (5, 96, 3), (9, 1408, 40)]:
        as_q5_0, as_q8_0 = q5_0_as_q8_0_outputs(fallback_linear, t, k, n, seed=t + k + n)
        assert np.array_equal(as_q5_0, as_q8_0)


@pytest.mark.slow  # gguf-py reads the whole file
def test_real_weights_of_the_default_model(smollm2_gguf):
    tensors = {t.name: t for t in smollm2_gguf.tensors}  # the test extra's independent reader of the raw blocks
    rng = np.random.default_rng(8)
    for name, rows in [("blk.0.attn_q.weight", None), ("blk.0.ffn_down.weight", None), ("token_embd.weight", 1000)]:
        tensor = tensors[name]
        raw = np.ascontiguousarray(tensor.data[:rows])
        x = rng.standard_normal((3, int(tensor.shape[0]))).astype(np.float32)
        check_raw(GGMLType(int(tensor.tensor_type)), raw, x)


def test_bound_is_tight_enough_to_mean_something():
    """About 1% of |x| @ |W|.T for Gaussian activations: int8 rounding of max|x| / 127 steps."""
    rng = np.random.default_rng(1)
    raw = random_raw(Q.Q4_1, 576, 64, rng)
    x = rng.standard_normal((4, 576)).astype(np.float32)
    w = dequantize(raw.reshape(-1), Q.Q4_1, (576, 64)).astype(np.float64)
    bound = error_bound(x, raw, Q.Q4_1, 576, 64)
    assert np.median(bound / (np.abs(x.astype(np.float64)) @ np.abs(w).T)) < 0.02


def test_thread_counts_give_identical_results():
    rng = np.random.default_rng(2)
    raw = random_raw(Q.Q4_1, 576, 1536, rng)
    weight = pack_weight(raw, Q.Q4_1, (576, 1536))
    x = rng.standard_normal((9, 576)).astype(np.float32)
    before = get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            set_num_threads(threads)
            results.append(quantized_linear(x, weight))
    finally:
        set_num_threads(before)
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("ggml_type", sorted(set(kernel_types()) - set(FLOAT_TYPES)), ids=lambda t: GGMLType(t).name)
def test_a_row_gets_the_same_bits_in_any_batch(ggml_type):
    """Prefill-sized calls tile tokens and row groups differently from decode's (pairs of groups over 5-token tiles for
    some types, 8-token tiles of one group for others, with tails of both): each row's output is still the bits of
    that row multiplied alone, so a sequence's tokens never depend on what was batched with them."""
    rng = np.random.default_rng(ggml_type)
    k, n = ROW_LENGTHS[GGMLType(ggml_type)][-1], 16 * 5 + 3  # an odd number of whole groups, then a partial one
    weight = pack_weight(random_raw(GGMLType(ggml_type), k, n, rng), GGMLType(ggml_type), (k, n))
    x = rng.standard_normal((37, k)).astype(np.float32)
    alone = np.concatenate([quantized_linear(x[i:i + 1], weight) for i in range(len(x))])
    for rows in (16, 37):
        assert np.array_equal(quantized_linear(x[:rows], weight), alone[:rows])


def test_writes_into_out_and_handles_zero_tokens():
    rng = np.random.default_rng(3)
    weight = pack_weight(random_raw(Q.Q8_0, 64, 5, rng), Q.Q8_0, (64, 5))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    out = np.full((3, 5), np.nan, np.float32)
    assert quantized_linear(x, weight, out) is out
    assert np.array_equal(out, quantized_linear(x, weight))
    assert quantized_linear(np.empty((0, 64), np.float32), weight).shape == (0, 5)


def test_contiguous_row_slice_of_a_larger_array():
    rng = np.random.default_rng(4)
    raw = random_raw(Q.Q4_0, 96, 17, rng)
    weight = pack_weight(raw, Q.Q4_0, (96, 17))
    x = rng.standard_normal((10, 96)).astype(np.float32)
    assert np.array_equal(quantized_linear(x[3:5], weight), quantized_linear(x[3:5].copy(), weight))


def test_read_only_input_is_accepted():
    """Inputs are only read: a read-only x (e.g. a view of a memory-mapped file) works like a writeable one."""
    rng = np.random.default_rng(9)
    weight = pack_weight(random_raw(Q.Q8_0, 64, 5, rng), Q.Q8_0, (64, 5))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    frozen = x.copy()
    frozen.flags.writeable = False
    assert np.array_equal(quantized_linear(frozen, weight), quantized_linear(x, weight))


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "make_x, make_out",
    [
        (lambda: np.ones((2, 64)), lambda: None),
        (lambda: np.ones((2, 32), np.float32), lambda: None),
        (lambda: np.ones(64, np.float32), lambda: None),
        (lambda: np.ones((64, 2), np.float32).T, lambda: None),
        (lambda: [[0.0] * 64], lambda: None),
        (lambda: np.ones((2, 64), np.float32), lambda: np.empty((2, 4), np.float32)),
        (lambda: np.ones((2, 64), np.float32), lambda: np.empty((3, 5), np.float32)),
        (lambda: np.ones((2, 64), np.float32), lambda: np.empty((5, 2), np.float32).T),
        (lambda: np.ones((2, 64), np.float32), lambda: np.empty((2, 5), np.float16)),
        (lambda: np.ones((2, 64), np.float32), lambda: read_only(np.empty((2, 5), np.float32))),
    ],
    ids=["float64", "wrong-K", "1-d", "non-contiguous", "list", "out-cols", "out-rows", "out-strided", "out-dtype",
         "out-read-only"],
)
def test_bad_inputs_raise_request_error(make_x, make_out):
    weight = pack_weight(random_raw(Q.Q8_0, 64, 5, np.random.default_rng(5)), Q.Q8_0, (64, 5))
    with pytest.raises(RequestError):
        quantized_linear(make_x(), weight, make_out())


def test_bad_weight_argument_raises_request_error():
    with pytest.raises(RequestError, match="PackedWeight"):
        quantized_linear(np.ones((1, 64), np.float32), object())


def test_pack_weight_rejects_bad_weights():
    raw = random_raw(Q.Q4_1, 64, 4, np.random.default_rng(6))
    with pytest.raises(ModelFormatError, match="bytes"):
        pack_weight(raw[:3], Q.Q4_1, (64, 4))
    with pytest.raises(ModelFormatError, match="multiple"):
        pack_weight(np.zeros(4 * 60 * 20 // 32, np.uint8), Q.Q4_1, (60, 4))
    with pytest.raises(ModelFormatError, match="shape"):
        pack_weight(raw, Q.Q4_1, (64, 0))
    with pytest.raises(ModelFormatError, match="contiguous"):
        pack_weight(np.zeros((40, 8), np.uint8)[:, ::2], Q.Q4_1, (64, 4))
    with pytest.raises(UnsupportedModelError, match="Q5_1"):
        pack_weight(np.zeros(24, np.uint8), Q.Q5_1, (32, 1))
    with pytest.raises(UnsupportedModelError, match="unknown"):
        pack_weight(raw, 99, (64, 4))


def test_set_num_threads_validates():
    with pytest.raises(RequestError):
        set_num_threads(0)


def test_default_thread_count_is_at_most_the_usable_cpus():
    """physical_cores (the default) counts hyperthread siblings once, among the CPUs this process may run on."""
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_packed_weight_keeps_the_file_size():
    raw = random_raw(Q.Q4_1, 576, 1536, np.random.default_rng(7))
    weight = pack_weight(raw, Q.Q4_1, (576, 1536))
    assert isinstance(weight, PackedWeight) and weight.nbytes == raw.nbytes
    assert weight.data.ctypes.data % 64 == 0 and not weight.data.flags.writeable


@pytest.mark.parametrize("t, k, n", [(1, 64, 17), (7, 576, 40), (64, 2880, 3)])
def test_mxfp4_runs_as_q8_0_within_the_bound(t, k, n):
    """gpt-oss's MXFP4 experts, as the CPU backend packs them (Q8_0 blocks of the same values), against x @ W.T in
    float64 over gguf-py's dequantization of the MXFP4 bytes."""
    import gguf  # the test extra's independent dequantizer

    from deeproots.quant.mxfp4 import mxfp4_as_q8_0

    rng = np.random.default_rng(t + k + n)
    raw = rng.integers(0, 256, (n, k // 32, 17), dtype=np.uint8)
    raw[..., 0] = rng.integers(118, 126, raw.shape[:2])  # 2^-10 .. 2^-3, as trained weights
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = gguf.quants.dequantize(raw.reshape(n, -1), gguf.GGMLQuantizationType.MXFP4).astype(np.float64)  # (N, K)
    repacked = mxfp4_as_q8_0(raw).reshape(n, -1)
    np.testing.assert_array_equal(reference_linear(x, repacked, Q.Q8_0, (k, n)), x.astype(np.float64) @ w.T)
    check_raw(Q.Q8_0, repacked, x)
