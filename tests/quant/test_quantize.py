"""Our reference quantizers: bit-exact with gguf-py where it has one, within error bounds otherwise."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.quant import GGMLType, dequantize, quantizable_types, quantize
from deeproots.quant.scale_search import scale_and_min, symmetric_scale

# Formats gguf-py can quantize: ours must produce the same bytes.
GGUF_QUANTIZABLE = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.MXFP4,
]  # fmt: skip


def gguf_quantize(values: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """gguf-py's bytes, shaped (..., row_bytes) like ours (it returns F32/F16 as floats)."""
    with np.errstate(all="ignore"):
        out = gguf.quants.quantize(values, gguf.GGMLQuantizationType(int(ggml_type)))
    return np.ascontiguousarray(out).view(np.uint8)


def block_size(ggml_type: GGMLType) -> int:
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(ggml_type))][0]


def awkward_blocks() -> np.ndarray:
    """Blocks that stress the edge cases: zeros, constants, ties, rounding halves, signs."""
    ramp = np.arange(32, dtype=np.float32)
    blocks = [
        np.zeros(32),
        np.full(32, 3.0),
        np.full(32, -3.0),
        ramp - 16,  # most negative value has the largest magnitude
        16 - ramp,  # most positive one does
        np.where(ramp % 2 == 0, 5.0, -5.0),  # +5 and -5 tie for the largest magnitude
        np.concatenate([[127.0], ramp[1:] + 0.5]),  # Q8_0 with d = 1: exact halves round away from 0
        np.concatenate([[-127.0], -(ramp[1:] + 0.5)]),
        np.concatenate([[1.0], np.full(31, 1e-30)]),  # tiny values beside a large one
        np.linspace(-1e-3, 2e-3, 32),
        np.linspace(-6e4, 6e4, 32),  # near the f16 range
    ]
    return np.stack(blocks).astype(np.float32).reshape(1, -1)


@pytest.mark.parametrize("ggml_type", GGUF_QUANTIZABLE, ids=lambda t: t.name)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_random_rows_match_gguf(ggml_type, scale):
    rng = np.random.default_rng([int(ggml_type), int(scale * 1000)])
    values = (rng.standard_normal((6, 5, 64)) * scale).astype(np.float32)
    ours = quantize(values, ggml_type)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, gguf_quantize(values, ggml_type))


@pytest.mark.parametrize("ggml_type", GGUF_QUANTIZABLE, ids=lambda t: t.name)
def test_awkward_blocks_match_gguf(ggml_type):
    values = awkward_blocks()
    np.testing.assert_array_equal(quantize(values, ggml_type), gguf_quantize(values, ggml_type))


@pytest.mark.filterwarnings("error")
@settings(max_examples=80, deadline=None)
@given(
    ggml_type=st.sampled_from(GGUF_QUANTIZABLE),
    values=hnp.arrays(np.float32, (2, 32), elements=st.floats(-1e4, 1e4, width=32)),
)
def test_any_finite_values_match_gguf(ggml_type, values):
    amax = np.abs(values).max(axis=-1)
    assume(((amax == 0) | (amax > 1e-30)).all())  # tinier blocks: see test_tiny_blocks_quantize_to_zero
    np.testing.assert_array_equal(quantize(values, ggml_type), gguf_quantize(values, ggml_type))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    "ggml_type", GGUF_QUANTIZABLE[3:] + [GGMLType.Q4_K, GGMLType.Q6_K], ids=lambda t: t.name
)
def test_tiny_blocks_quantize_to_zero(ggml_type):
    """Where 1/d overflows float32, ggml's C is undefined; we store the block as zeros, warning-free."""
    values = np.zeros(block_size(ggml_type), np.float32)
    values[:3] = [1e-40, -3e-41, 1e-39]
    back = dequantize(quantize(values, ggml_type), ggml_type, values.shape)
    np.testing.assert_array_equal(back, np.zeros_like(values))


@settings(max_examples=60, deadline=None)
@given(
    ggml_type=st.sampled_from([GGMLType.F16, GGMLType.BF16]),
    values=hnp.arrays(np.float32, 8, elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
)
def test_float_types_match_gguf_on_any_value(ggml_type, values):
    """NaN and infinity are storable in F16/BF16; BF16 must quiet NaN and round ties to even."""
    np.testing.assert_array_equal(quantize(values, ggml_type), gguf_quantize(values, ggml_type))


@pytest.mark.parametrize("ggml_type", [GGMLType.F32, GGMLType.F16, GGMLType.BF16], ids=lambda t: t.name)
def test_float_types_round_trip_representable_values(ggml_type):
    values = np.array([0.0, -0.0, 1.0, -2.5, 0.15625, 65280.0, -np.inf], np.float32)
    back = dequantize(quantize(values, ggml_type), ggml_type, (len(values),))
    np.testing.assert_array_equal(back.view(np.uint32), values.view(np.uint32))


def f16_rounding(value: np.ndarray) -> np.ndarray:
    """Largest error of storing `value` as f16: half an ulp, 2**-25 absolute among subnormals."""
    return np.maximum(np.abs(value) * 2.0**-11, 2.0**-25)


# Worst |x - dequantize(quantize(x))| per block: the format's step error, plus the f16 rounding of
# the stored scale times the largest level and of the stored min.
ERROR_BOUNDS = {
    # d = amax/127, q = round(x/d): half a step
    GGMLType.Q8_0: lambda amax, lo, hi: amax / 127 / 2 + 127 * f16_rounding(amax / 127),
    # d = -max/8: the opposite extreme clips from q = 16 to 15, a whole step
    GGMLType.Q4_0: lambda amax, lo, hi: amax / 8 + 8 * f16_rounding(amax / 8),
    GGMLType.Q5_0: lambda amax, lo, hi: amax / 16 + 16 * f16_rounding(amax / 16),
    # d = (max - min)/15, q = round((x - min)/d): half a step
    GGMLType.Q4_1: lambda amax, lo, hi: (hi - lo) / 15 / 2 + 15 * f16_rounding((hi - lo) / 15) + f16_rounding(lo),
    GGMLType.Q5_1: lambda amax, lo, hi: (hi - lo) / 31 / 2 + 31 * f16_rounding((hi - lo) / 31) + f16_rounding(lo),
}


@pytest.mark.parametrize("ggml_type", list(ERROR_BOUNDS), ids=lambda t: t.name)
def test_round_trip_error_within_format_bound(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    size = block_size(ggml_type)
    values = (rng.standard_normal((40, size)) * rng.uniform(1e-3, 10, (40, 1))).astype(np.float32)
    back = dequantize(quantize(values, ggml_type), ggml_type, (size, 40))
    bound = ERROR_BOUNDS[ggml_type](
        np.abs(values).max(axis=1), values.min(axis=1), values.max(axis=1)
    )
    error = np.abs(back - values).max(axis=1)
    assert (error <= bound * 1.0001).all(), (error / bound).max()


def test_output_shape_keeps_leading_dims():
    assert quantize(np.zeros((2, 3, 64), np.float32), GGMLType.Q8_0).shape == (2, 3, 2 * 34)


def test_quantizable_types():
    assert set(GGUF_QUANTIZABLE) <= quantizable_types()


def test_row_length_off_block_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="row length 48 is not a multiple of Q4_0's block size 32"):
        quantize(np.zeros((2, 48), np.float32), GGMLType.Q4_0)


def test_type_without_quantizer_names_the_quantizable_ones():
    with pytest.raises(UnsupportedModelError, match=r"quantizing to Q2_K is not implemented.*Q8_0"):
        quantize(np.zeros(256, np.float32), GGMLType.Q2_K)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_block_formats_reject_non_finite_values(bad):
    values = np.zeros(32, np.float32)
    values[5] = bad
    with pytest.raises(ModelFormatError, match="NaN or infinity"):
        quantize(values, GGMLType.Q8_0)


def test_scalar_is_rejected():
    with pytest.raises(UnsupportedModelError, match="0-d"):
        quantize(np.float32(1.0), GGMLType.F32)


# --- k-quants: gguf-py has no quantizer for them, so they are held to error bounds instead ---

K_QUANTIZABLE = [GGMLType.Q4_K, GGMLType.Q6_K]


def rmse(ggml_type: GGMLType, values: np.ndarray) -> float:
    back = dequantize(quantize(values, ggml_type), ggml_type, tuple(reversed(values.shape)))
    return float(np.sqrt(np.mean((back - values) ** 2)))


@pytest.mark.parametrize("ggml_type", K_QUANTIZABLE + GGUF_QUANTIZABLE[3:], ids=lambda t: t.name)
def test_llama_cpp_total_error_bound(ggml_type):
    """llama.cpp's test-quantize-fns: data 0.1 + 2 cos(i), error sqrt(sum diff**2) / n < 0.002."""
    values = (0.1 + 2 * np.cos(np.arange(32 * 128, dtype=np.float32))).astype(np.float32)
    assert rmse(ggml_type, values) / np.sqrt(values.size) < 0.002


@pytest.mark.parametrize(
    ("ggml_type", "worse_yardstick"),
    [(GGMLType.Q4_K, GGMLType.Q4_1), (GGMLType.Q6_K, GGMLType.Q5_1)],
    ids=["Q4_K<Q4_1", "Q6_K<Q5_1"],
)
def test_k_quants_beat_gguf_quantized_simpler_formats(ggml_type, worse_yardstick):
    """4-bit with searched scales must beat plain min/max 4-bit; 6-bit must beat 5-bit.

    Q4_K's per-value bits equal Q4_1's, so only a working scale/min search gets it below.
    """
    values = np.random.default_rng(5).standard_normal((16, 1024)).astype(np.float32)
    back = dequantize(gguf_quantize(values, worse_yardstick), worse_yardstick, (1024, 16))
    assert rmse(ggml_type, values) < float(np.sqrt(np.mean((back - values) ** 2)))


# Worst |x - dequantize(quantize(x))| per super-block, loose but safe: half a step, up to one more
# step where the search trades clipping an extreme for finer steps, the rounding of each sub-block's
# scale (and min) to 6 or 8 bits relative to the largest, and f16's subnormal spacing (2**-24) of
# d (and dmin) times the largest level product.
K_ERROR_BOUNDS = {
    # levels span [min(x, 0), max(x, 0)] in steps of about a sub-block's range / 15
    GGMLType.Q4_K: lambda values: (np.maximum(values.max(axis=-1), 0) - np.minimum(values.min(axis=-1), 0)) / 8
    + (63 * 15 + 63) * 2.0**-25,
    # steps of about a sub-block's max |x| / 32
    GGMLType.Q6_K: lambda values: np.abs(values).max(axis=-1) / 16 + 128 * 32 * 2.0**-25,
}


@pytest.mark.filterwarnings("error")
@settings(max_examples=40, deadline=None)
@given(
    ggml_type=st.sampled_from(K_QUANTIZABLE),
    values=hnp.arrays(np.float32, (2, 256), elements=st.floats(-1e3, 1e3, width=32)),
)
def test_k_quant_round_trip_error_within_bound(ggml_type, values):
    back = dequantize(quantize(values, ggml_type), ggml_type, (256, 2))
    error = np.abs(back - values).max(axis=-1)
    assert (error <= K_ERROR_BOUNDS[ggml_type](values)).all()


@pytest.mark.parametrize("ggml_type", K_QUANTIZABLE, ids=lambda t: t.name)
def test_k_quant_gaussian_rows_within_bound(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    values = (rng.standard_normal((64, 256)) * rng.uniform(1e-3, 10, (64, 1)) + rng.normal(0, 1, (64, 1)))
    values = values.astype(np.float32)
    back = dequantize(quantize(values, ggml_type), ggml_type, (256, 64))
    assert (np.abs(back - values).max(axis=-1) <= K_ERROR_BOUNDS[ggml_type](values)).all()


@pytest.mark.parametrize("ggml_type", K_QUANTIZABLE, ids=lambda t: t.name)
def test_k_quant_zero_block_is_all_zero_bytes(ggml_type):
    """As ggml writes it: every scale, min and level 0."""
    assert not quantize(np.zeros((3, 256), np.float32), ggml_type).any()


# --- the vectorized scale searches against a line-by-line float32 transcription of ggml's C ---

F32 = np.float32


def nearest_int(value: np.float32) -> int:
    return int(np.rint(value))  # ggml's magic-number trick rounds half to even


def ggml_make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.float32, list[int]]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL), scalar by scalar."""
    largest, amax = F32(0), F32(0)
    for v in x:
        if abs(v) > amax:
            amax, largest = abs(v), v
    if amax < F32(1e-15):
        return F32(0), [0] * len(x)

    def attempt(iscale):
        levels, sumlx, suml2 = [], F32(0), F32(0)
        for v in x:
            level = max(-nmax, min(nmax - 1, nearest_int(iscale * v)))
            levels.append(level + nmax)
            w = v * v
            sumlx += w * v * F32(level)
            suml2 += w * F32(level) * F32(level)
        return levels, sumlx, suml2

    levels, sumlx, suml2 = attempt(F32(-nmax) / largest)
    scale = sumlx / suml2 if suml2 else F32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        candidate, sumlx, suml2 = attempt(-(F32(nmax) + F32(0.1) * F32(step)) / largest)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            levels, scale = candidate, sumlx / suml2
            best = scale * sumlx
    return scale, levels


def ggml_make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep) -> tuple[np.float32, np.float32, list[int]]:
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false)."""
    low, high, sum_w, sum_x = x[0], x[0], weights[0], weights[0] * x[0]
    for v, w in zip(x[1:], weights[1:]):
        low, high = min(low, v), max(high, v)
        sum_w += w
        sum_x += w * v
    low = min(low, F32(0))
    if high == low:
        return F32(0), -low, [0] * len(x)

    def levels_for(iscale):
        return [max(0, min(nmax, nearest_int(iscale * (v - low)))) for v in x]

    def error(scale, offset, levels):
        total = F32(0)
        for v, w, level in zip(x, weights, levels):
            diff = scale * F32(level) + offset - v
            total += w * (diff * diff)
        return total

    iscale = F32(nmax) / (high - low)
    scale = F32(1) / iscale
    levels = levels_for(iscale)
    best_error = error(scale, low, levels)
    for step in range(nstep + 1):
        candidate = levels_for((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (high - low))
        sum_l = sum_l2 = sum_xl = F32(0)
        for v, w, level in zip(x, weights, candidate):
            sum_l += w * F32(level)
            sum_l2 += w * F32(level) * F32(level)
            sum_xl += w * F32(level) * v
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > 0:
                this_min, this_scale = F32(0), sum_xl / sum_l2
            this_error = error(this_scale, this_min, candidate)
            if this_error < best_error:
                levels, best_error, scale, low = candidate, this_error, this_scale, this_min
    return scale, -low, levels


def sub_blocks(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian rows with mixed scales and offsets, plus all-zero, constant and one-sided rows."""
    rows = rng.standard_normal((12, n)) * rng.uniform(1e-3, 10, (12, 1)) + rng.normal(0, 2, (12, 1))
    rows[0] = 0
    rows[1] = -1.5
    rows[2] = np.abs(rows[2])
    rows[3] = -np.abs(rows[3])
    rows[4, ::2] = 0
    return rows.astype(np.float32)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_symmetric_scale_matches_ggml_transcription(seed):
    x = sub_blocks(16, np.random.default_rng(seed))
    scales, levels = symmetric_scale(x, nmax=32)
    for row, scale, row_levels in zip(x, scales, levels):
        expected_scale, expected_levels = ggml_make_qx_quants(row, 32)
        assert scale.view(np.uint32) == expected_scale.view(np.uint32)
        assert row_levels.tolist() == expected_levels


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_scale_and_min_matches_ggml_transcription(seed):
    x = sub_blocks(32, np.random.default_rng(seed))
    weights = (np.sqrt(np.cumsum(x * x, axis=-1)[:, -1:] / F32(32)) + np.abs(x)).astype(np.float32)
    scales, mins, levels = scale_and_min(x, weights, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20)
    for row, row_weights, scale, the_min, row_levels in zip(x, weights, scales, mins, levels):
        expected = ggml_make_qkx2_quants(row, row_weights, 15, -1.0, 0.1, 20)
        assert scale.view(np.uint32) == expected[0].view(np.uint32)
        assert the_min.view(np.uint32) == expected[1].view(np.uint32)
        assert row_levels.tolist() == expected[2]


@settings(max_examples=30, deadline=None)
@given(values=hnp.arrays(np.float32, 32, elements=st.floats(-1e3, 1e3, width=32)))
@example(values=np.array([0.0] + [-0.0] * 31, dtype=np.float32))  # ggml keeps the first of equal minima: 0.0
def test_searches_match_ggml_transcription_on_any_values(values):
    amax = np.abs(values).max()
    assume(amax == 0 or amax > 1e-30)  # tinier spans are undefined behaviour in ggml's C
    weights = np.sqrt(np.cumsum(values * values)[-1] / F32(32)) + np.abs(values)
    scale, the_min, levels = scale_and_min(values[np.newaxis], weights[np.newaxis], 15, -1.0, 0.1, 20)
    expected = ggml_make_qkx2_quants(values, weights, 15, -1.0, 0.1, 20)
    assert (scale[0].view(np.uint32), the_min[0].view(np.uint32)) == tuple(v.view(np.uint32) for v in expected[:2])
    assert levels[0].tolist() == expected[2]
    scale, levels = symmetric_scale(values[np.newaxis, :16], 32)
    expected_scale, expected_levels = ggml_make_qx_quants(values[:16], 32)
    assert scale[0].view(np.uint32) == expected_scale.view(np.uint32)
    assert levels[0].tolist() == expected_levels
