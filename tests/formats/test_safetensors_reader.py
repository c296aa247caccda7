"""The safetensors reader against HF's `safetensors` and `transformers`, on malformed files and under fuzzing."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from deeproots.errors import (
    DeeprootsError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from deeproots.formats.safetensors import (
    DTYPE_BITS,
    SafetensorsFile,
    SafetensorsTensorInfo,
    open_checkpoint,
)


def raw_file(header: dict | str | bytes, data: bytes = b"", header_length: int | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header)
    encoded = header if isinstance(header, bytes) else header.encode("utf-8")
    length = len(encoded) if header_length is None else header_length
    return struct.pack("<Q", length) + encoded + data


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def as_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 5, generator=generator)
    return {
        "f32": floats,
        "f16": floats.half(),
        "bf16": floats.bfloat16(),
        "f64": floats.double().reshape(5, 3),
        "f8_e4m3": floats.to(torch.float8_e4m3fn),
        "i8": torch.randint(-128, 128, (4, 2), dtype=torch.int8, generator=generator),
        "i16": torch.randint(-(2**15), 2**15, (7,), dtype=torch.int16, generator=generator),
        "i32": torch.randint(-(2**31), 2**31, (2, 1, 3), dtype=torch.int32, generator=generator),
        "i64": torch.tensor([-(2**63), 2**63 - 1, 0], dtype=torch.int64),
        "u8": torch.arange(256, dtype=torch.uint8),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5),
        "scalar_i64": torch.tensor(-7, dtype=torch.int64),
        "empty": torch.zeros(0, dtype=torch.float32),
        "empty_middle": torch.zeros(3, 0, 2, dtype=torch.bfloat16),
        "odd_bf16": torch.ones(3, dtype=torch.bfloat16),  # 6 bytes: the next tensor starts unaligned
    }


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("st") / "sample.safetensors"
    save_file(sample_tensors(), str(path), metadata={"format": "pt", "note": "héllo"})
    return path


def test_tensors_equal_hf_safe_open_bit_for_bit(hf_file: Path) -> None:
    with SafetensorsFile.open(hf_file) as ours, safe_open(str(hf_file), "pt") as theirs:
        assert ours.metadata == theirs.metadata() == {"format": "pt", "note": "héllo"}
        assert set(ours.tensors) == set(theirs.keys()) == set(sample_tensors())
        for name in sorted(ours.tensors):
            expected, got, info = theirs.get_tensor(name), ours.tensor_bytes(name), ours.tensors[name]
            assert info.shape == tuple(expected.shape), name
            assert got.tobytes() == as_bytes(expected), name
            assert info.nbytes == expected.numel() * expected.element_size()
            assert hf_file.read_bytes()[info.offset:info.offset + info.nbytes] == as_bytes(expected)


def test_tensor_is_a_view_of_the_map_and_writes_never_reach_the_file(hf_file: Path) -> None:
    before = hf_file.read_bytes()
    with SafetensorsFile.open(hf_file) as file:
        first, second = file.tensor_bytes("f32"), file.tensor_bytes("f32")
        assert first.ctypes.data == second.ctypes.data  # both views of the same mapped bytes
        first[:] = 0
        assert not second.any()
    assert hf_file.read_bytes() == before


def test_tensor_outlives_close_and_closed_file_refuses_reads(hf_file: Path) -> None:
    file = SafetensorsFile.open(hf_file)
    kept = file.tensor_bytes("i64")
    file.close()
    assert kept.view(np.int64).tolist() == [-(2**63), 2**63 - 1, 0]
    with pytest.raises(DeeprootsError, match="closed"):
        file.tensor_bytes("i64")
    with pytest.raises(KeyError):
        SafetensorsFile.open(hf_file).tensor_bytes("nope")


def test_unknown_dtype_keeps_header_readable(tmp_path: Path) -> None:
    header = {"q": entry("Q4_X", [2], 0, 3), "f4": entry("F4", [4], 3, 5), "ok": entry("U8", [2], 5, 7)}
    path = tmp_path / "unknown.safetensors"
    path.write_bytes(raw_file(header, b"abcdeXY"))
    with SafetensorsFile.open(path) as file:
        assert file.tensors["q"] == SafetensorsTensorInfo("q", "Q4_X", (2,), file.tensors["q"].offset, 3)
        assert file.tensors["f4"].nbytes == 2  # F4 is sized (4 bits): its bytes can be read
        assert file.tensor_bytes("f4").tobytes() == b"de"
        assert file.tensor_bytes("ok").tobytes() == b"XY"
        with pytest.raises(UnsupportedModelError, match="q"):
            file.tensor_bytes("q")  # an unknown dtype: not even its size can be checked


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        SafetensorsFile.open(tmp_path / "absent.safetensors")
    with pytest.raises(ModelNotFoundError):
        open_checkpoint(tmp_path / "absent")
    with pytest.raises(ModelNotFoundError):
        open_checkpoint(tmp_path)  # a folder without weights


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder, max_shard_size="20KB")
    return folder, {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.slow  # transformers writes a checkpoint
def test_sharded_transformers_checkpoint_matches_state_dict(llama_folder: tuple[Path, dict]) -> None:
    folder, state_dict = llama_folder
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    tensors = open_checkpoint(folder)
    try:
        assert set(tensors) == set(state_dict)
        for name, (file, info) in tensors.items():
            assert info.dtype == "BF16" and info.shape == tuple(state_dict[name].shape), name
            assert file.tensor_bytes(name).tobytes() == as_bytes(state_dict[name]), name
    finally:
        for file in {id(file): file for file, _ in tensors.values()}.values():
            file.close()


def test_single_file_checkpoint(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    tensors = open_checkpoint(tmp_path)
    file, info = tensors["a"]
    assert info.shape == (2,) and file.tensor_bytes("a").view(np.float32).tolist() == [1.0, 1.0]
    file.close()


# Malformed single files: (id, bytes, expected field). Data for a valid 2-tensor layout is 6 bytes.
GOOD = {"a": entry("U8", [2], 0, 2), "b": entry("I16", [2], 2, 6)}
MALFORMED_FILES = [
    ("empty_file", b"", "header_length"),
    ("short_length", b"\x01\x00\x00", "header_length"),
    ("length_beyond_file", raw_file(GOOD, bytes(6), header_length=10_000), "header_length"),
    ("length_over_cap", raw_file(GOOD, bytes(6), header_length=2**63 + 5), "header_length"),
    ("length_cuts_json", raw_file(GOOD, bytes(6), header_length=20), "header"),
    ("not_utf8", raw_file(b'{"\xff": {}}'), "header"),
    ("bad_json", raw_file('{"a": {"dtype": "U8",', b""), "header"),
    ("json_array", raw_file("[]"), "header"),
    ("json_nan", raw_file('{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 0]}}'), "header"),
    ("deep_nesting", raw_file("[" * 100_000 + "]" * 100_000), "header"),
    ("duplicate_tensor", raw_file('{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                                  '"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"), "header"),
    ("duplicate_field", raw_file('{"a": {"dtype": "U8", "dtype": "I8", "shape": [1], "data_offsets": [0, 1]}}',
                                 b"x"), "header"),
    ("lone_surrogate_name", raw_file('{"\\ud800": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"),
     "header"),
    ("entry_not_object", raw_file({"a": [1, 2]}), "a"),
    ("dtype_int", raw_file({"a": entry(8, [2], 0, 2)}, b"xx"), "a.dtype"),
    ("dtype_missing", raw_file({"a": {"shape": [2], "data_offsets": [0, 2]}}, b"xx"), "a.dtype"),
    ("shape_negative", raw_file({"a": entry("U8", [-2], 0, 2)}, b"xx"), "a.shape"),
    ("shape_float", raw_file({"a": entry("U8", [2.0], 0, 2)}, b"xx"), "a.shape"),
    ("shape_bool", raw_file({"a": entry("U8", [True], 0, 1)}, b"x"), "a.shape"),
    ("shape_not_list", raw_file({"a": entry("U8", 2, 0, 2)}, b"xx"), "a.shape"),
    ("shape_nine_dims", raw_file({"a": entry("U8", [1] * 9, 0, 1)}, b"x"), "a.shape"),
    ("offsets_reversed", raw_file({"a": entry("U8", [0], 2, 0)}, b"xx"), "a.data_offsets"),
    ("offsets_three", raw_file({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}, b"x"),
     "a.data_offsets"),
    ("offsets_negative", raw_file({"a": entry("U8", [0], -1, -1)}), "a.data_offsets"),
    ("offsets_outside", raw_file({"a": entry("U8", [2], 0, 2), "b": entry("U8", [4], 2, 6)}, b"xx"), "data"),
    ("offsets_far_outside", raw_file({"a": entry("U8", [2], 2**64, 2**64 + 2)}, b"xx"), "a.data_offsets"),
    ("overlap", raw_file({"a": entry("U8", [4], 0, 4), "b": entry("U8", [2], 2, 4)}, b"xxxx"), "b.data_offsets"),
    ("gap", raw_file({"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 3, 5)}, b"xxxxx"), "b.data_offsets"),
    ("first_not_at_zero", raw_file({"a": entry("U8", [2], 1, 3)}, b"xxx"), "a.data_offsets"),
    ("trailing_bytes", raw_file(GOOD, bytes(7)), "data"),
    ("truncated_data", raw_file(GOOD, bytes(5)), "data"),
    ("size_mismatch", raw_file({"a": entry("F32", [2], 0, 4)}, b"xxxx"), "a.data_offsets"),
    ("size_overflowing_product", raw_file({"a": entry("F64", [2**40] * 8, 0, 8)}, bytes(8)), "a.data_offsets"),
    ("subbyte_misaligned", raw_file({"a": entry("F4", [3], 0, 2)}, b"xx"), "a.data_offsets"),
    ("metadata_int_value", raw_file({"__metadata__": {"k": 1}}), "__metadata__"),
    ("metadata_not_object", raw_file({"__metadata__": ["k", "v"]}), "__metadata__"),
    ("metadata_nested", raw_file({"__metadata__": {"k": {"v": "w"}}}), "__metadata__"),
]


@pytest.mark.parametrize("content, field", [case[1:] for case in MALFORMED_FILES],
                         ids=[case[0] for case in MALFORMED_FILES])
def test_malformed_file_raises_model_format_error(tmp_path: Path, content: bytes, field: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as caught:
        SafetensorsFile.open(path)
    assert caught.value.field == field
    assert caught.value.offset is not None and 0 <= caught.value.offset <= len(content)


def test_error_offset_points_at_the_entry_key(tmp_path: Path) -> None:
    content = raw_file(GOOD | {"zz": entry("U8", [-1], 6, 6)}, bytes(6))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError) as caught:
        SafetensorsFile.open(path)
    assert content[caught.value.offset:].startswith(b'"zz"')


def test_hf_accepts_what_we_accept_at_the_edges(tmp_path: Path) -> None:
    """Layouts HF's reader allows: unsorted entries, padded header, null metadata, zero-size tensors anywhere."""
    header = ('  {"__metadata__": null, "b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}, '
              '"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [1, 1]}, '
              '"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}    ')
    path = tmp_path / "edge.safetensors"
    path.write_bytes(raw_file(header, b"AB"))
    with SafetensorsFile.open(path) as ours, safe_open(str(path), "pt") as theirs:
        assert ours.metadata == {} and set(ours.tensors) == set(theirs.keys())
        for name in sorted(ours.tensors):
            assert ours.tensor_bytes(name).tobytes() == as_bytes(theirs.get_tensor(name))


def write_folder(folder: Path, weight_map: dict, shards: dict[str, dict[str, torch.Tensor]]) -> Path:
    folder.mkdir(exist_ok=True)
    for shard, tensors in shards.items():
        save_file(tensors, str(folder / shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


ONE, TWO = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
SHARDS = {ONE: {"a": torch.ones(1)}, TWO: {"b": torch.zeros(2)}}
MALFORMED_FOLDERS = [
    ("index_outside_folder", {"a": "../" + ONE, "b": TWO}, SHARDS, "weight_map['a']"),
    ("index_absolute_path", {"a": "/etc/passwd", "b": TWO}, SHARDS, "weight_map['a']"),
    ("index_missing_file", {"a": ONE, "b": "model-00003-of-00003.safetensors"}, SHARDS, "weight_map['b']"),
    ("index_not_string", {"a": ONE, "b": 2}, SHARDS, "weight_map['b']"),
    ("tensor_missing_from_shard", {"a": ONE, "b": TWO, "c": TWO}, SHARDS, "weight_map['c']"),
    ("tensor_in_wrong_shard", {"a": TWO, "b": TWO}, SHARDS, "weight_map['a']"),
    ("duplicate_across_shards", {"a": ONE, "b": TWO}, {ONE: {"a": torch.ones(1)}, TWO: {"a": torch.ones(1),
                                                                                          "b": torch.ones(1)}}, "a"),
]


@pytest.mark.parametrize("weight_map, shards, field", [case[1:] for case in MALFORMED_FOLDERS],
                         ids=[case[0] for case in MALFORMED_FOLDERS])
def test_malformed_checkpoint_folder(tmp_path: Path, weight_map: dict, shards: dict, field: str) -> None:
    (tmp_path / ONE).write_bytes(b"outside")  # what "../" would reach
    folder = write_folder(tmp_path / "ckpt", weight_map, shards)
    with pytest.raises(ModelFormatError) as caught:
        open_checkpoint(folder)
    assert caught.value.field == field


@pytest.mark.parametrize("index", ["[]", '{"weight_map": []}', '{"weight_map": {"a": "x", "a": "y"}}', "{"])
def test_malformed_index_json(tmp_path: Path, index: str) -> None:
    save_file({"a": torch.ones(1)}, str(tmp_path / "x"))
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelFormatError):
        open_checkpoint(tmp_path)


FUZZ_TENSORS = {"b": torch.ones(2, dtype=torch.bfloat16), "s": torch.tensor(1, dtype=torch.int8),
                "w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
FUZZ_HEADER = json.dumps({"__metadata__": {"format": "pt"}, "b": entry("BF16", [2], 0, 4), "s": entry("I8", [], 4, 5),
                          "w": entry("F32", [2, 3], 5, 29)}).encode()
FUZZ_DATA = b"".join(as_bytes(tensor) for tensor in FUZZ_TENSORS.values())
JSON_BYTES = [b"{", b"}", b"[", b"]", b'"', b",", b":", b"-", b"0", b"9", b"1e9", b"null", b"true", b"\\u", b"\xff"]
BOUNDARY_NUMBERS = [b"-1", b"0", b"1", b"3", b"4", b"5", b"6", b"28", b"29", b"30", b"1.0", b"18446744073709551616"]


def edits(size: int) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("flip"), st.integers(0, size - 1), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.tuples(st.just("insert"), st.integers(0, size), st.sampled_from(JSON_BYTES) | st.binary(max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, size - 1), st.integers(1, 8)),
        st.tuples(st.just("number"), st.integers(0, 20), st.sampled_from(BOUNDARY_NUMBERS)),
    )


def edit(content: bytes, edit_list: list[tuple]) -> bytes:
    data = bytearray(content)
    for kind, position, *arguments in edit_list:
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << arguments[0]
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = arguments[0]
        elif kind == "delete":
            del data[position:position + arguments[0]]
        elif kind == "number":  # overwrite the n-th run of digits: reaches shape and offset checks
            runs = [(match.start(), match.end()) for match in re.finditer(rb"\d+", bytes(data))]
            if runs:
                begin, end = runs[position % len(runs)]
                data[begin:end] = arguments[0]
    return bytes(data)


# Edits to the JSON text (the length prefix then re-computed, to reach the deeper checks) or to raw file bytes.
fuzz_case = st.one_of(st.tuples(st.just("json"), st.lists(edits(len(FUZZ_HEADER)), min_size=1, max_size=3)),
                      st.tuples(st.just("raw"), st.lists(edits(8 + len(FUZZ_HEADER) + len(FUZZ_DATA)), min_size=1,
                                                         max_size=3)))


@pytest.mark.slow  # hypothesis, many files
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fuzz_case)
def test_fuzzed_files_open_or_raise_deeproots_error(tmp_path: Path, case: tuple[str, list[tuple]]) -> None:
    target, edit_list = case
    if target == "json":
        content = raw_file(edit(FUZZ_HEADER, edit_list), FUZZ_DATA)
    else:
        content = edit(raw_file(FUZZ_HEADER, FUZZ_DATA), edit_list)
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(content)
    try:
        file = SafetensorsFile.open(path)
    except DeeprootsError:
        return
    with file:
        for name, info in file.tensors.items():
            try:
                raw = file.tensor_bytes(name)
            except UnsupportedModelError:
                continue
            assert raw.nbytes == info.nbytes == math.prod(info.shape) * DTYPE_BITS[info.dtype] // 8
