"""Our reference dequantizers against gguf-py's, bit for bit, on random and real blocks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.quant import GGMLType, block_format, dequantize, supported_types
from deeproots.quant.tensors import CHUNK_VALUES

FORMATS = [
    GGMLType.F32, GGMLType.F16, GGMLType.BF16,
    GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1, GGMLType.Q8_0,
    GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K,
    GGMLType.MXFP4,
]  # fmt: skip

# Byte offsets of the f16 scale fields in each block, from the structs in ggml-common.h.
F16_SCALE_OFFSETS = {
    GGMLType.Q4_0: (0,),
    GGMLType.Q4_1: (0, 2),
    GGMLType.Q5_0: (0,),
    GGMLType.Q5_1: (0, 2),
    GGMLType.Q8_0: (0,),
    GGMLType.Q2_K: (16 + 64, 16 + 64 + 2),
    GGMLType.Q3_K: (32 + 64 + 12,),
    GGMLType.Q4_K: (0, 2),
    GGMLType.Q5_K: (0, 2),
    GGMLType.Q6_K: (128 + 64 + 16,),
    GGMLType.MXFP4: (),  # its scale is the E8M0 byte 0: see finite_blocks
}


def geometry(ggml_type: GGMLType) -> tuple[int, int]:
    """(block_size, type_size) from gguf-py's own table, not ours."""
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(ggml_type))]


def gguf_dequantize(raw: np.ndarray, ggml_type: GGMLType, rows: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType(int(ggml_type)))


def assert_bit_exact(ours: np.ndarray, expected: np.ndarray) -> None:
    """Same shape, dtype float32 and bits; any NaN matches any NaN (payloads may differ)."""
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape
    same = (ours.view(np.uint32) == expected.view(np.uint32)) | (np.isnan(ours) & np.isnan(expected))
    assert same.all(), f"{np.count_nonzero(~same)} of {same.size} values differ"


def random_blocks(ggml_type: GGMLType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, n_blocks * geometry(ggml_type)[1], dtype=np.uint8)


def finite_blocks(ggml_type: GGMLType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random blocks whose f16 scales (or plain float values) are finite, as in real files."""
    block_size, type_size = geometry(ggml_type)
    values = rng.standard_normal(n_blocks * block_size).astype(np.float32)
    if ggml_type == GGMLType.F32:
        return values.view(np.uint8)
    if ggml_type == GGMLType.F16:
        return values.astype(np.float16).view(np.uint8)
    if ggml_type == GGMLType.BF16:
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = random_blocks(ggml_type, n_blocks, rng).reshape(n_blocks, type_size)
    for offset in F16_SCALE_OFFSETS[ggml_type]:
        scales = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
        blocks[:, offset : offset + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    if ggml_type == GGMLType.MXFP4:
        blocks[:, 0] = rng.integers(100, 140, n_blocks)  # 2^-28 .. 2^11: no overflow to inf
    return blocks.reshape(-1)


def test_supported_types_are_the_documented_formats():
    assert supported_types() == frozenset(FORMATS)


@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_layout_adds_up_to_gguf_block_geometry(ggml_type):
    fmt = block_format(ggml_type)
    assert fmt.ggml_type == ggml_type
    assert (fmt.block_size, fmt.type_size) == geometry(ggml_type)
    assert sum(field.nbytes for field in fmt.layout) == geometry(ggml_type)[1]


@pytest.mark.parametrize("n_blocks", [1, 3, 7, 2 * CHUNK_VALUES // 256 + 1])
@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_random_bytes_match_gguf(ggml_type, n_blocks):
    rng = np.random.default_rng([int(ggml_type), n_blocks])
    raw = random_blocks(ggml_type, n_blocks, rng)
    n_values = n_blocks * geometry(ggml_type)[0]
    assert_bit_exact(dequantize(raw, ggml_type, (n_values,)), gguf_dequantize(raw, ggml_type, 1)[0])


@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_finite_scales_match_gguf_and_stay_finite(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    raw = finite_blocks(ggml_type, 9, rng)
    ours = dequantize(raw, ggml_type, (9 * geometry(ggml_type)[0],))
    assert np.isfinite(ours).all()
    assert_bit_exact(ours, gguf_dequantize(raw, ggml_type, 1)[0])


@pytest.mark.parametrize("ggml_type", FORMATS, ids=lambda t: t.name)
def test_2d_shape_is_reversed_gguf_order(ggml_type):
    block_size = geometry(ggml_type)[0]
    rows, row_length = 5, 3 * block_size
    raw = finite_blocks(ggml_type, rows * 3, np.random.default_rng(7))
    ours = dequantize(raw, ggml_type, (row_length, rows))
    assert ours.shape == (rows, row_length)
    assert_bit_exact(ours, gguf_dequantize(raw, ggml_type, rows))


@settings(max_examples=60, deadline=None)
@given(ggml_type=st.sampled_from(FORMATS), data=st.data())
def test_any_bytes_match_gguf(ggml_type, data):
    block_size, type_size = geometry(ggml_type)
    n_blocks = data.draw(st.integers(1, 4), label="n_blocks")
    raw = np.frombuffer(data.draw(st.binary(min_size=n_blocks * type_size, max_size=n_blocks * type_size)), np.uint8)
    assert_bit_exact(dequantize(raw, ggml_type, (n_blocks * block_size,)), gguf_dequantize(raw, ggml_type, 1)[0])


def test_q4_0_by_hand():
    """d = 2; byte j holds q = j (value j) and q = 15 - j (value j + 16); value = d * (q - 8)."""
    block = np.concatenate([np.float16(2.0).reshape(1).view(np.uint8), [j | (15 - j) << 4 for j in range(16)]])
    expected = [2.0 * (j - 8) for j in range(16)] + [2.0 * (7 - j) for j in range(16)]
    np.testing.assert_array_equal(dequantize(block.astype(np.uint8), GGMLType.Q4_0, (32,)), expected)


def test_mxfp4_by_hand():
    """e = 129 scales the doubled e2m1 levels by 2^(129 - 128) = 2: codes 0..15 then 15..0."""
    block = np.array([129] + [j | (15 - j) << 4 for j in range(16)], np.uint8)
    levels = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]  # OCP MX spec's e2m1 values, doubled
    expected = [2.0 * levels[j] for j in range(16)] + [2.0 * levels[15 - j] for j in range(16)]
    np.testing.assert_array_equal(dequantize(block, GGMLType.MXFP4, (32,)), expected)


def test_reads_a_memmap(tmp_path):
    raw = finite_blocks(GGMLType.Q6_K, 4, np.random.default_rng(3))
    path = tmp_path / "blocks.bin"
    path.write_bytes(b"pad" + raw.tobytes())
    mapped = np.memmap(path, np.uint8, mode="r", offset=3)  # unaligned, read-only
    ours = dequantize(mapped, GGMLType.Q6_K, (256, 4))
    assert type(ours) is np.ndarray
    assert_bit_exact(ours, gguf_dequantize(raw, GGMLType.Q6_K, 4))


@pytest.mark.slow  # 272 tensors through gguf-py's dequantizer
def test_every_tensor_of_the_default_model_matches_gguf(smollm2_gguf):
    reader = smollm2_gguf
    seen = set()
    for tensor in reader.tensors:
        ggml_type = GGMLType(int(tensor.tensor_type))
        seen.add(ggml_type)
        raw = tensor.data.view(np.uint8)
        ours = dequantize(raw, ggml_type, tuple(int(dim) for dim in tensor.shape))
        assert_bit_exact(ours, gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    assert seen == {GGMLType.F32, GGMLType.Q4_1, GGMLType.Q8_0}


def test_wrong_byte_count_is_a_format_error():
    raw = np.zeros(18 * 2 + 1, np.uint8)
    with pytest.raises(ModelFormatError, match="needs 36 bytes, got 37") as caught:
        dequantize(raw, GGMLType.Q4_0, (64,))
    assert caught.value.field == "raw"


def test_row_length_off_block_is_a_format_error():
    with pytest.raises(ModelFormatError, match="not a multiple of its block size 32") as caught:
        dequantize(np.zeros(36, np.uint8), GGMLType.Q4_0, (16, 4))
    assert caught.value.field == "shape"


@pytest.mark.parametrize("shape", [(), (32, -1), (32.0,)])
def test_bad_shape_is_a_format_error(shape):
    with pytest.raises(ModelFormatError, match="shape"):
        dequantize(np.zeros(18, np.uint8), GGMLType.Q4_0, shape)


def test_non_byte_data_is_a_format_error():
    with pytest.raises(ModelFormatError, match="uint8"):
        dequantize(np.zeros(4, np.float32), GGMLType.F32, (4,))


def test_unimplemented_type_names_itself_and_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match=r"IQ2_XXS.*supported types:.*Q4_K"):
        dequantize(np.zeros(66, np.uint8), GGMLType.IQ2_XXS, (256,))


def test_unknown_type_number_is_unsupported():
    with pytest.raises(UnsupportedModelError, match=r"99.*supported types:.*Q8_0"):
        block_format(99)


def test_empty_tensor_gives_empty_values():
    assert dequantize(np.zeros(0, np.uint8), GGMLType.Q8_0, (32, 0)).shape == (0, 32)


@pytest.mark.parametrize("exponents, exact", [((104, 147), True), ((60, 104), False), ((147, 200), False)])
def test_mxfp4_as_q8_0_keeps_the_values(exponents, exact):
    """gguf-py reads the Q8_0 blocks as the MXFP4 ones: bit for bit with the exponents f16 covers, else within its
    documented rounding (below 2^-24: an error under 2^-25) or clipping (above)."""
    from deeproots.quant.mxfp4 import mxfp4_as_q8_0

    rng = np.random.default_rng(exponents[0])
    raw = rng.integers(0, 256, (64, 17), dtype=np.uint8)
    raw[:, 0] = rng.integers(*exponents, 64)
    expected = gguf_dequantize(raw.reshape(-1), GGMLType.MXFP4, 1)[0]
    ours = gguf_dequantize(mxfp4_as_q8_0(raw), GGMLType.Q8_0, 1)[0]
    if exact:
        assert_bit_exact(ours, expected)
    elif exponents[0] < 104:
        assert np.abs(ours - expected).max() <= 2.0**-25
    else:
        assert (np.abs(ours) <= np.abs(expected)).all() and (np.sign(ours) * np.sign(expected) >= 0).all()
