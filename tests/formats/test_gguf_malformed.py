"""A corpus of handcrafted malformed GGUF files: each must be refused with a typed error that
names the offending field, never a crash, hang or huge allocation."""

import os

import numpy as np
import pytest
from gguf_raw_bytes import (
    ARRAY, BOOL, F32, FLOAT64, INT32, INT64, Q4_0, Q8_0, STRING, UINT8, UINT32, UINT64,
    array, gguf, kv, kv_str, kv_u32, string, tensor_info, u32, u64,
)

from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.formats.gguf import GGUFFile, GGUFWriter
from deeproots.quant.types import GGMLType

ARCH = kv_str("general.architecture", "llama")
TENSOR_T = tensor_info("t", [8], F32, 0)  # 8 x f32 = 32 bytes at the start of the data section
DATA_64 = bytes(64)


def with_tensors(*infos: bytes, data: bytes = DATA_64, kvs: tuple[bytes, ...] = (ARCH,), **options) -> bytes:
    return gguf(list(kvs), list(infos), data, **options)


def nested(depth: int) -> bytes:
    """An ARRAY payload nesting `depth` arrays, the innermost an empty UINT8 array."""
    payload = array(UINT8, 0, b"")
    for _ in range(depth - 1):
        payload = array(ARRAY, 1, payload)
    return payload


FORMAT_ERROR, UNSUPPORTED = ModelFormatError, UnsupportedModelError

# (id, file bytes, expected error, expected field or None when the field is not meaningful)
CASES = [
    # Header
    ("empty_file", b"", FORMAT_ERROR, "magic"),
    ("bad_magic", gguf(magic=b"GGUX"), FORMAT_ERROR, "magic"),
    ("ggml_magic", gguf(magic=b"lmgg"), FORMAT_ERROR, "magic"),
    ("magic_only", b"GGUF", FORMAT_ERROR, "version"),
    ("truncated_version", b"GGUF\x03\x00", FORMAT_ERROR, "version"),
    ("version_0", gguf(version=0), FORMAT_ERROR, "version"),
    ("version_4", gguf(version=4), FORMAT_ERROR, "version"),
    ("version_huge", gguf(version=0xFFFFFFFF), FORMAT_ERROR, "version"),
    ("version_1", gguf(version=1), UNSUPPORTED, None),
    ("big_endian_version_3", gguf(version=0x03000000), UNSUPPORTED, None),
    ("truncated_tensor_count", b"GGUF" + u32(3) + bytes(4), FORMAT_ERROR, "tensor_count"),
    ("truncated_kv_count", b"GGUF" + u32(3) + u64(0) + bytes(3), FORMAT_ERROR, "kv_count"),
    ("kv_count_huge", gguf(n_kv=2**64 - 1), FORMAT_ERROR, "kv_count"),
    ("kv_count_beyond_bytes", gguf([ARCH], n_kv=4, alignment=1), FORMAT_ERROR, "kv_count"),
    ("tensor_count_huge", gguf(n_tensors=2**63), FORMAT_ERROR, "tensor_count"),
    ("tensor_count_beyond_bytes", gguf([ARCH], n_tensors=2, alignment=1), FORMAT_ERROR, "tensor_count"),
    ("kv_count_overstated", with_tensors(TENSOR_T, n_kv=2), FORMAT_ERROR, None),
    ("kv_count_understated", with_tensors(TENSOR_T, n_kv=0), FORMAT_ERROR, None),
    ("tensor_count_overstated", with_tensors(TENSOR_T, n_tensors=2), FORMAT_ERROR, None),
    # Keys
    ("key_length_huge", gguf([string("k", length=2**64 - 1) + u32(UINT8) + b"\x01"]), FORMAT_ERROR, "kv[0].key"),
    ("key_length_past_end", gguf([string("abc", length=40) + u32(UINT8) + b"\x01"], alignment=1),
     FORMAT_ERROR, "kv[0].key"),
    ("key_empty", gguf([kv("", UINT8, b"\x01")]), FORMAT_ERROR, "kv[0].key"),
    ("key_too_long", gguf([kv("k" * 65536, UINT8, b"\x01")]), FORMAT_ERROR, "kv[0].key"),
    ("key_invalid_utf8", gguf([kv(b"\xff\xfe", UINT8, b"\x01")]), FORMAT_ERROR, "kv[0].key"),
    ("key_second_truncated", gguf([ARCH, b"\x05"], n_kv=2, alignment=1), FORMAT_ERROR, None),
    ("duplicate_key", gguf([kv_u32("a.b", 1), kv_u32("a.b", 2)]), FORMAT_ERROR, "a.b"),
    # Scalar and string values
    ("value_type_unknown", gguf([kv("a.b", 13, u32(0))]), FORMAT_ERROR, "a.b"),
    ("value_type_huge", gguf([kv("a.b", 0xFFFFFFFF, u32(0))]), FORMAT_ERROR, "a.b"),
    ("value_type_truncated", gguf([ARCH, string("a.b") + b"\x04\x00"], alignment=1), FORMAT_ERROR, "a.b"),
    ("scalar_truncated", gguf([kv("a.b", UINT64, b"\x00\x00")], alignment=1), FORMAT_ERROR, "a.b"),
    ("string_length_past_end", gguf([kv("a.b", STRING, string("xy", length=100))], alignment=1),
     FORMAT_ERROR, "a.b"),
    ("string_length_over_cap", gguf([kv("a.b", STRING, string("xy", length=2**28 + 1))]), FORMAT_ERROR, "a.b"),
    ("string_invalid_utf8", gguf([kv_str("a.b", b"ok\xc3\x28")]), FORMAT_ERROR, "a.b"),
    ("string_overlong_utf8", gguf([kv_str("a.b", b"\xc0\xaf")]), FORMAT_ERROR, "a.b"),
    ("string_utf8_surrogate", gguf([kv_str("a.b", b"\xed\xa0\x80")]), FORMAT_ERROR, "a.b"),
    ("bool_value_2", gguf([kv("a.b", BOOL, b"\x02")]), FORMAT_ERROR, "a.b"),
    # Arrays
    ("array_item_type_unknown", gguf([kv("a.b", ARRAY, array(42, 0, b""))]), FORMAT_ERROR, "a.b"),
    ("array_item_type_truncated", gguf([kv("a.b", ARRAY, b"\x04\x00")], alignment=1), FORMAT_ERROR, "a.b"),
    ("array_count_truncated", gguf([kv("a.b", ARRAY, u32(UINT8) + b"\x01\x00")], alignment=1),
     FORMAT_ERROR, "a.b"),
    ("array_count_huge", gguf([kv("a.b", ARRAY, array(UINT8, 2**64 - 1, b""))]), FORMAT_ERROR, "a.b"),
    ("array_count_over_cap", gguf([kv("a.b", ARRAY, array(UINT8, 2**24 + 1, b""))]), FORMAT_ERROR, "a.b"),
    ("array_numbers_past_end", gguf([kv("a.b", ARRAY, array(UINT32, 1000, u32(1) * 3))], alignment=1),
     FORMAT_ERROR, "a.b"),
    ("array_strings_past_end", gguf([kv("a.b", ARRAY, array(STRING, 100, string("a")))], alignment=1),
     FORMAT_ERROR, "a.b"),
    ("array_string_item_past_end",
     gguf([kv("a.b", ARRAY, array(STRING, 2, string("a") + string("bcd", length=50)))], alignment=1),
     FORMAT_ERROR, "a.b[1]"),
    ("array_string_item_length_truncated",
     gguf([kv("a.b", ARRAY, array(STRING, 2, string("a") + bytes(7)))], alignment=1), FORMAT_ERROR, "a.b[1]"),
    ("array_string_item_over_cap",
     gguf([kv("a.b", ARRAY, array(STRING, 1, string("a", length=2**28 + 1)))]), FORMAT_ERROR, "a.b[0]"),
    ("array_string_item_invalid_utf8",
     gguf([kv("a.b", ARRAY, array(STRING, 2, string(b"\x80") + string("b")))]), FORMAT_ERROR, "a.b[0]"),
    # Arrays as long as a vocabulary are decoded after the tensor infos (formats/gguf.py): the same checks apply.
    ("long_array_string_item_invalid_utf8",
     gguf([kv("a.b", ARRAY, array(STRING, 3000, string("x") * 2000 + string(b"\xc3\x28") + string("y") * 999)),
           kv_u32("a.c", 1)]), FORMAT_ERROR, "a.b[2000]"),
    ("long_array_string_item_past_end",
     gguf([kv("a.b", ARRAY, array(STRING, 3000, string("x") * 2999 + string("yz", length=50)))], alignment=1),
     FORMAT_ERROR, "a.b[2999]"),
    ("array_bool_item_7", gguf([kv("a.b", ARRAY, array(BOOL, 3, b"\x01\x00\x07"))]), FORMAT_ERROR, "a.b[2]"),
    ("array_nested_too_deep", gguf([kv("a.b", ARRAY, nested(5))]), FORMAT_ERROR, "a.b[0][0][0][0]"),
    ("array_nested_inner_truncated",
     gguf([kv("a.b", ARRAY, array(ARRAY, 2, array(UINT8, 1, b"\x05") + array(UINT8, 5, b"\x01")))], alignment=1),
     FORMAT_ERROR, "a.b[1]"),
    ("array_nested_inner_type_unknown", gguf([kv("a.b", ARRAY, array(ARRAY, 1, array(99, 0, b"")))]),
     FORMAT_ERROR, "a.b[0]"),
    # Well-known keys
    ("alignment_wrong_type", gguf([kv("general.alignment", UINT64, u64(32))]), FORMAT_ERROR, "general.alignment"),
    ("alignment_zero", gguf([kv_u32("general.alignment", 0)]), FORMAT_ERROR, "general.alignment"),
    ("alignment_not_power_of_two", gguf([kv_u32("general.alignment", 48)]), FORMAT_ERROR, "general.alignment"),
    ("architecture_wrong_type", gguf([kv_u32("general.architecture", 1)]), FORMAT_ERROR, "general.architecture"),
    ("tokens_wrong_item_type", gguf([kv("tokenizer.ggml.tokens", ARRAY, array(INT32, 1, u32(5)))]),
     FORMAT_ERROR, "tokenizer.ggml.tokens"),
    ("scores_wrong_item_type", gguf([kv("tokenizer.ggml.scores", ARRAY, array(FLOAT64, 1, u64(0)))]),
     FORMAT_ERROR, "tokenizer.ggml.scores"),
    ("token_type_scalar", gguf([kv("tokenizer.ggml.token_type", INT32, u32(1))]),
     FORMAT_ERROR, "tokenizer.ggml.token_type"),
    ("chat_template_array", gguf([kv("tokenizer.chat_template", ARRAY, array(STRING, 1, string("x")))]),
     FORMAT_ERROR, "tokenizer.chat_template"),
    ("bos_token_id_int64", gguf([kv("tokenizer.ggml.bos_token_id", INT64, u64(1))]),
     FORMAT_ERROR, "tokenizer.ggml.bos_token_id"),
    # Tensor infos
    ("tensor_name_empty", with_tensors(tensor_info("", [8], F32, 0)), FORMAT_ERROR, "tensor[0].name"),
    ("tensor_name_too_long", with_tensors(tensor_info("x" * 64, [8], F32, 0)), FORMAT_ERROR, "tensor[0].name"),
    ("tensor_name_invalid_utf8", with_tensors(tensor_info(b"w\xff", [8], F32, 0)), FORMAT_ERROR, "tensor[0].name"),
    ("tensor_name_length_huge",
     with_tensors(string("t", length=2**64 - 1) + u32(1) + u64(8) + u32(F32) + u64(0)),
     FORMAT_ERROR, "tensor[0].name"),
    ("duplicate_tensor_name", with_tensors(TENSOR_T, tensor_info("t", [8], F32, 32)), FORMAT_ERROR, "tensor[1].name"),
    ("n_dims_zero", with_tensors(tensor_info("t", [], F32, 0)), FORMAT_ERROR, "t.n_dims"),
    ("n_dims_five", with_tensors(tensor_info("t", [8, 1, 1, 1, 1], F32, 0)), FORMAT_ERROR, "t.n_dims"),
    ("n_dims_huge", with_tensors(tensor_info("t", [8], F32, 0, n_dims=2**32 - 1)), FORMAT_ERROR, "t.n_dims"),
    ("dim_zero", with_tensors(tensor_info("t", [8, 0], F32, 0)), FORMAT_ERROR, "t.shape"),
    ("element_count_2_pow_64", with_tensors(tensor_info("t", [2**32, 2**32], F32, 0)), FORMAT_ERROR, "t.shape"),
    ("element_count_2_pow_63", with_tensors(tensor_info("t", [2**62, 2], F32, 0)), FORMAT_ERROR, "t.shape"),
    ("dim_2_pow_64_minus_1", with_tensors(tensor_info("t", [2**64 - 1], F32, 0)), FORMAT_ERROR, "t.shape"),
    ("shape_truncated", gguf([ARCH, string("t") + u32(4) + u64(8) + u64(1)], n_kv=1, n_tensors=1, alignment=1),
     FORMAT_ERROR, "t.shape"),
    ("tensor_type_truncated", gguf([ARCH, string("t") + u32(1) + u64(8) + b"\x00\x00"], n_kv=1, n_tensors=1,
                                   alignment=1), FORMAT_ERROR, "t.type"),
    ("tensor_offset_truncated", gguf([ARCH, string("t") + u32(1) + u64(8) + u32(F32) + bytes(4)], n_kv=1,
                                     n_tensors=1, alignment=1), FORMAT_ERROR, "t.offset"),
    ("q4_0_row_not_multiple_of_block", with_tensors(tensor_info("t", [48, 1], Q4_0, 0)), FORMAT_ERROR, "t.shape"),
    ("q8_0_row_not_multiple_of_block", with_tensors(tensor_info("t", [33], Q8_0, 0)), FORMAT_ERROR, "t.shape"),
    # Tensor data placement
    ("offset_misaligned", with_tensors(tensor_info("t", [8], F32, 16)), FORMAT_ERROR, "t.offset"),
    ("offset_misaligned_custom_alignment",
     with_tensors(tensor_info("t", [8], F32, 32), kvs=(kv_u32("general.alignment", 64),), alignment=64),
     FORMAT_ERROR, "t.offset"),
    ("tensor_past_end", with_tensors(TENSOR_T, data=bytes(16)), FORMAT_ERROR, "t.offset"),
    ("tensor_offset_huge", with_tensors(tensor_info("t", [8], F32, 2**64 - 32)), FORMAT_ERROR, "t.offset"),
    ("no_data_section", with_tensors(TENSOR_T, data=b""), FORMAT_ERROR, "t.offset"),
    ("no_data_section_no_padding", with_tensors(TENSOR_T, data=b"", alignment=1), FORMAT_ERROR, "t.offset"),
    ("tensors_overlap_same_offset", with_tensors(TENSOR_T, tensor_info("u", [8], F32, 0)), FORMAT_ERROR, "u.offset"),
    ("tensors_overlap_partially", with_tensors(tensor_info("t", [16], F32, 0), tensor_info("u", [8], F32, 32)),
     FORMAT_ERROR, "u.offset"),
    ("tensors_overlap_listed_out_of_order",
     with_tensors(tensor_info("u", [8], F32, 32), tensor_info("t", [16], F32, 0)), FORMAT_ERROR, "u.offset"),
    ("unknown_type_past_end", with_tensors(tensor_info("t", [8], 200, 1024)), FORMAT_ERROR, "t.offset"),
    ("unknown_type_misaligned", with_tensors(tensor_info("t", [8], 200, 8)), FORMAT_ERROR, "t.offset"),
    ("unknown_type_dim_zero", with_tensors(tensor_info("t", [0], 200, 0)), FORMAT_ERROR, "t.shape"),
    # Well-formed files that use what we do not implement: refused when the tensor is read
    ("unknown_tensor_type", with_tensors(tensor_info("t", [8], 200, 0)), UNSUPPORTED, None),
    ("removed_tensor_type_q4_2", with_tensors(tensor_info("t", [32], 4, 0)), UNSUPPORTED, None),
    ("tensor_type_huge", with_tensors(tensor_info("t", [8], 2**32 - 1, 0)), UNSUPPORTED, None),
]


def open_and_read_everything(path: os.PathLike) -> None:
    with GGUFFile.open(path) as gguf_file:
        for name in gguf_file.tensors:
            gguf_file.tensor_data(name)


def test_corpus_is_large_and_uniquely_named():
    assert len(CASES) >= 50
    assert len({case_id for case_id, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize(("content", "expected_error", "expected_field"),
                         [pytest.param(content, error, field, id=case_id) for case_id, content, error, field in CASES])
def test_malformed_file_is_refused(tmp_path, content, expected_error, expected_field):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(expected_error) as raised:
        open_and_read_everything(path)
    if expected_error is ModelFormatError:
        error = raised.value
        assert error.offset is not None and 0 <= error.offset <= len(content)
        if expected_field is not None:
            assert error.field == expected_field


def test_caps_are_reported_as_limits(tmp_path):
    path = tmp_path / "big_string.gguf"
    path.write_bytes(gguf([kv("a.b", STRING, string("xy", length=2**28 + 1))]))
    with pytest.raises(ModelFormatError, match="limit"):
        GGUFFile.open(path)


def test_unknown_tensor_type_keeps_metadata_and_other_tensors_readable(tmp_path):
    data = np.arange(8, dtype=np.float32).tobytes() + bytes(24) + bytes(range(32))
    path = tmp_path / "unknown_type.gguf"
    path.write_bytes(with_tensors(TENSOR_T, tensor_info("mystery", [8], 200, 32), data=data))
    with GGUFFile.open(path) as gguf_file:
        assert gguf_file.metadata["general.architecture"] == "llama"
        assert list(gguf_file.tensors) == ["t", "mystery"]
        mystery = gguf_file.tensors["mystery"]
        assert (mystery.ggml_type, mystery.nbytes, mystery.shape) == (200, None, (8,))
        assert np.array_equal(gguf_file.tensor_data("t").view(np.float32), np.arange(8, dtype=np.float32))
        with pytest.raises(UnsupportedModelError, match="mystery.*200"):
            gguf_file.tensor_data("mystery")


def test_unknown_type_tensor_may_share_bytes_with_known_ones(tmp_path):
    # Its size is unknown, so it is left out of the overlap check instead of guessed at.
    path = tmp_path / "unknown_overlap.gguf"
    path.write_bytes(with_tensors(TENSOR_T, tensor_info("mystery", [8], 200, 0)))
    with GGUFFile.open(path) as gguf_file:
        assert gguf_file.tensor_data("t").nbytes == 32


def small_valid_file() -> bytes:
    writer = GGUFWriter()
    writer.add("general.architecture", "llama")
    writer.add("tokenizer.ggml.tokens", ["a", "bc", "déf"])
    writer.add("some.numbers", np.arange(5, dtype=np.int16))
    writer.add_tensor("w", np.ones((2, 32), dtype=np.float32), GGMLType.F32)
    writer.add_tensor("q", np.zeros(2 * 34, dtype=np.uint8), GGMLType.Q8_0, shape=(32, 2))
    return writer.to_bytes()


def test_every_truncation_is_refused_until_the_last_tensor_is_whole(tmp_path):
    content = small_valid_file()
    path = tmp_path / "full.gguf"
    path.write_bytes(content)
    with GGUFFile.open(path) as gguf_file:
        needed = max(info.offset + info.nbytes for info in gguf_file.tensors.values())
    for length in range(len(content)):
        path.write_bytes(content[:length])
        if length < needed:
            with pytest.raises(ModelFormatError):
                GGUFFile.open(path)
        else:  # only the trailing padding is missing
            GGUFFile.open(path).close()


def test_failed_open_closes_the_file(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(with_tensors(TENSOR_T, data=bytes(16)))
    open_fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ModelFormatError):
            GGUFFile.open(path)
    assert len(os.listdir("/proc/self/fd")) == open_fds_before
