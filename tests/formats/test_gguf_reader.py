"""Our GGUF reader and writer, checked against the official `gguf` package (gguf-py)."""

import resource

import gguf
import numpy as np
import pytest
from gguf_raw_bytes import ARRAY, F32, UINT8, array, kv, kv_str, tensor_info
from gguf_raw_bytes import gguf as raw_gguf
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deeproots.errors import DeeprootsError, ModelFormatError, ModelNotFoundError
from deeproots.formats.gguf import GGUFFile, GGUFValueType, GGUFWriter, TensorNotFoundError
from deeproots.quant.types import GGMLType

V = GGUFValueType


def reference_types(field) -> tuple[int, int | None]:
    """gguf-py's (value type, item type) of a field; it lists no item type for an empty array."""
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return int(field.types[0]), int(field.types[1]) if len(field.types) > 1 else None
    return int(field.types[0]), None


def reference_fields(reader: gguf.GGUFReader) -> dict:
    return {key: field for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def tensor_bytes(tensor) -> np.ndarray:
    return np.frombuffer(np.ascontiguousarray(tensor.data).tobytes(), dtype=np.uint8)


def assert_same_value(ours, theirs) -> None:
    if isinstance(ours, np.ndarray):
        assert np.array_equal(ours, np.asarray(theirs, dtype=ours.dtype))
    else:
        assert ours == theirs and type(ours) is type(theirs)


# The real default model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files(smollm2_path, smollm2_gguf):
    with GGUFFile.open(smollm2_path) as ours:
        yield ours, smollm2_gguf


@pytest.mark.slow  # gguf-py parses the real model (seconds)
def test_real_model_metadata_matches_gguf_py(real_files):
    ours, reference = real_files
    fields = reference_fields(reference)
    assert list(ours.metadata) == list(fields)
    assert ours.version == 3
    for key, field in fields.items():
        value_type, item_type = reference_types(field)
        assert ours.metadata_types[key] == (value_type, item_type), key
        assert_same_value(ours.metadata[key], field.contents())
        if value_type == V.ARRAY and item_type not in (V.STRING, V.ARRAY):
            assert ours.metadata[key].dtype == field.parts[field.data[0]].dtype, key
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(ours.metadata["tokenizer.ggml.merges"]) == 48900


@pytest.mark.slow  # gguf-py parses the real model (seconds)
def test_real_model_tensor_infos_match_gguf_py(real_files):
    ours, reference = real_files
    assert (ours.alignment, ours.data_offset) == (reference.alignment, reference.data_offset)
    assert list(ours.tensors) == [tensor.name for tensor in reference.tensors]
    for tensor in reference.tensors:
        info = ours.tensors[tensor.name]
        assert info.shape == tuple(tensor.shape.tolist())
        assert info.ggml_type == int(tensor.tensor_type)
        assert isinstance(info.ggml_type, GGMLType)
        assert info.offset == tensor.data_offset
        assert info.nbytes == tensor.n_bytes
        assert info.n_elements == tensor.n_elements


@pytest.mark.slow  # gguf-py parses the real model (seconds)
@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight",
                                  "blk.15.ffn_down.weight", "output_norm.weight"])
def test_real_model_tensor_bytes_match_gguf_py(real_files, name):
    ours, reference = real_files
    tensor = next(tensor for tensor in reference.tensors if tensor.name == name)
    data = ours.tensor_data(name)
    assert data.dtype == np.uint8 and data.shape == (tensor.n_bytes,)
    assert np.array_equal(data, tensor_bytes(tensor))


@pytest.mark.slow  # gguf-py parses the real model (seconds)
def test_real_model_tensor_data_is_a_read_only_view_of_the_file(real_files):
    ours, _ = real_files
    data = ours.tensor_data("output_norm.weight")
    assert not data.flags.owndata and not data.flags.writeable
    with open(ours.path, "rb") as file:
        file.seek(ours.tensors["output_norm.weight"].offset)
        assert data.tobytes() == file.read(data.nbytes)


# Lazy reading and lifetime ---------------------------------------------------------------------------


def test_header_read_never_touches_tensor_data(tmp_path):
    # An 8 GiB sparse tensor: reading it would fault in ~10^5..10^6 pages; the header needs a handful.
    huge_bytes = 2**31 * 4
    content = raw_gguf([kv_str("general.architecture", "llama")], [tensor_info("huge", [2**30, 2], F32, 0)])
    path = tmp_path / "sparse.gguf"
    with open(path, "wb") as file:
        file.write(content)
        file.truncate(len(content) + huge_bytes)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with GGUFFile.open(path) as gguf_file:
        data = gguf_file.tensor_data("huge")
        assert data.nbytes == huge_bytes
        del data
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before < 5000


def test_metadata_outlives_close_and_views_survive_it(tmp_path):
    writer = GGUFWriter()
    writer.add("some.numbers", np.arange(6, dtype=np.int32))
    writer.add_tensor("w", np.arange(8, dtype=np.float32), GGMLType.F32)
    path = tmp_path / "small.gguf"
    writer.write(path)
    gguf_file = GGUFFile.open(path)
    view = gguf_file.tensor_data("w")
    gguf_file.close()  # a view is alive: close must not raise, and the view stays valid
    assert np.array_equal(view.view(np.float32), np.arange(8, dtype=np.float32))
    assert np.array_equal(gguf_file.metadata["some.numbers"], np.arange(6))
    with pytest.raises(DeeprootsError, match="closed"):
        gguf_file.tensor_data("w")


def test_missing_tensor_is_a_typed_key_error(tmp_path):
    path = tmp_path / "empty.gguf"
    GGUFWriter().write(path)
    with GGUFFile.open(path) as gguf_file:
        with pytest.raises(TensorNotFoundError, match="nope") as raised:
            gguf_file.tensor_data("nope")
    assert isinstance(raised.value, KeyError) and isinstance(raised.value, DeeprootsError)


def test_missing_path_or_directory_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError):
        GGUFFile.open(tmp_path / "absent.gguf")
    with pytest.raises(ModelNotFoundError):
        GGUFFile.open(tmp_path)


def test_version_2_files_are_read(tmp_path):
    content = bytearray(raw_gguf([kv_str("general.architecture", "llama")], [tensor_info("t", [8], F32, 0)],
                                 bytes(32)))
    content[4:8] = (2).to_bytes(4, "little")
    path = tmp_path / "v2.gguf"
    path.write_bytes(bytes(content))
    with GGUFFile.open(path) as gguf_file:
        assert gguf_file.version == 2 == gguf.GGUFReader(path).fields["GGUF.version"].contents()
        assert gguf_file.tensors["t"].nbytes == 32


def test_arrays_nested_to_the_depth_limit_are_read(tmp_path):
    payload = array(UINT8, 2, b"\x07\x09")
    for _ in range(3):
        payload = array(ARRAY, 1, payload)
    path = tmp_path / "nested.gguf"
    path.write_bytes(raw_gguf([kv("a.nested", ARRAY, payload)]))
    with GGUFFile.open(path) as gguf_file:
        assert np.array_equal(gguf_file.metadata["a.nested"][0][0][0], [7, 9])


def test_metadata_only_file_without_padding_is_read(tmp_path):
    content = raw_gguf([kv_str("general.architecture", "llama")], alignment=1)
    path = tmp_path / "vocab_only.gguf"
    path.write_bytes(content)
    with GGUFFile.open(path) as gguf_file:
        assert gguf_file.metadata == {"general.architecture": "llama"} and gguf_file.tensors == {}


# Writer round trip --------------------------------------------------------------------------------------

INT_LIMITS = {V.UINT8: (0, 255), V.INT8: (-128, 127), V.UINT16: (0, 65535), V.INT16: (-32768, 32767),
              V.UINT32: (0, 2**32 - 1), V.INT32: (-2**31, 2**31 - 1), V.UINT64: (0, 2**64 - 1),
              V.INT64: (-2**63, 2**63 - 1)}
NUMPY_ITEM_TYPES = {np.uint8: V.UINT8, np.int8: V.INT8, np.uint16: V.UINT16, np.int16: V.INT16,
                    np.uint32: V.UINT32, np.int32: V.INT32, np.float32: V.FLOAT32, np.bool_: V.BOOL,
                    np.uint64: V.UINT64, np.int64: V.INT64, np.float64: V.FLOAT64}


def round_trip_metadata() -> list[tuple[str, object, dict, object, tuple]]:
    """(key, value given, add() options, value expected back, (type, item type) expected)."""
    rng = np.random.default_rng(0)  # the same cases on every call
    cases = []
    for value_type, (low, high) in INT_LIMITS.items():
        for name, number in (("min", low), ("max", high)):
            cases.append((f"explicit.{value_type.name.lower()}.{name}", number, {"value_type": value_type},
                          number, (value_type, None)))
    cases += [
        ("explicit.float32", -1.5, {"value_type": V.FLOAT32}, -1.5, (V.FLOAT32, None)),
        ("explicit.float64", 0.1, {"value_type": V.FLOAT64}, 0.1, (V.FLOAT64, None)),
        ("explicit.float32_from_int", 3, {"value_type": V.FLOAT32}, 3.0, (V.FLOAT32, None)),
        ("inferred.int32", -5, {}, -5, (V.INT32, None)),
        ("inferred.uint32", 2**31, {}, 2**31, (V.UINT32, None)),
        ("inferred.int64", -2**40, {}, -2**40, (V.INT64, None)),
        ("inferred.uint64", 2**63, {}, 2**63, (V.UINT64, None)),
        ("inferred.bool", True, {}, True, (V.BOOL, None)),
        ("inferred.float", 0.25, {}, 0.25, (V.FLOAT32, None)),
        ("inferred.numpy_scalar", np.uint16(7), {}, 7, (V.UINT16, None)),
        ("inferred.string", "héllo ✓ 世界", {}, "héllo ✓ 世界", (V.STRING, None)),
        ("inferred.empty_string", "", {}, "", (V.STRING, None)),
        ("inferred.int_list", [1, -2, 3], {}, np.array([1, -2, 3], np.int32), (V.ARRAY, V.INT32)),
        ("inferred.mixed_number_list", [1, 2.5], {}, np.array([1, 2.5], np.float32), (V.ARRAY, V.FLOAT32)),
        ("inferred.bool_list", [True, False], {}, np.array([True, False]), (V.ARRAY, V.BOOL)),
        ("inferred.string_list", ["", "a", "ü", "<|im_end|>"], {}, ["", "a", "ü", "<|im_end|>"],
         (V.ARRAY, V.STRING)),
        ("explicit.empty_array", [], {"item_type": V.INT16}, np.array([], np.int16), (V.ARRAY, V.INT16)),
        ("explicit.uint8_list", [0, 255], {"value_type": V.ARRAY, "item_type": V.UINT8},
         np.array([0, 255], np.uint8), (V.ARRAY, V.UINT8)),
        ("tokenizer.ggml.bos_token_id", 1, {}, 1, (V.UINT32, None)),
        ("general.architecture", "llama", {}, "llama", (V.STRING, None)),
        ("tokenizer.ggml.tokens", ["a", "b"], {}, ["a", "b"], (V.ARRAY, V.STRING)),
        ("tokenizer.ggml.scores", [0, -1.5], {}, np.array([0, -1.5], np.float32), (V.ARRAY, V.FLOAT32)),
        ("tokenizer.ggml.token_type", [1, 3], {}, np.array([1, 3], np.int32), (V.ARRAY, V.INT32)),
    ]
    for dtype, item_type in NUMPY_ITEM_TYPES.items():
        values = (rng.integers(0, 2, 17).astype(dtype) if dtype is np.bool_
                  else rng.standard_normal(17).astype(dtype) if np.dtype(dtype).kind == "f"
                  else rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, 17, dtype=dtype, endpoint=True))
        cases.append((f"numpy.{np.dtype(dtype).name}", values, {}, values, (V.ARRAY, item_type)))
    return cases


NESTED_KEY, NESTED_VALUE = "nested.lists", [[1, 2], ["x", "y"], [[True]]]


def round_trip_tensors() -> list[tuple[str, np.ndarray, GGMLType, tuple | None, bytes, tuple]]:
    """(name, data given, type, shape given, bytes expected, GGUF shape expected)."""
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    f64_as_f16 = rng.standard_normal((2, 8))
    q4_0 = rng.integers(0, 256, 2 * 18 * 4, dtype=np.uint8)
    q8_0 = rng.integers(0, 256, 34 * 3, dtype=np.uint8)
    q4_k = rng.integers(0, 256, 144 * 2, dtype=np.uint8)
    i32 = np.arange(-5, 5, dtype=np.int32)
    four_d = rng.standard_normal((2, 3, 1, 4)).astype(np.float32)
    q6_k = rng.integers(0, 256, 210 * 3, dtype=np.uint8)
    return [
        ("f32.matrix", f32, GGMLType.F32, None, f32.tobytes(), (64, 3)),
        ("f16.converted", f64_as_f16, GGMLType.F16, None, f64_as_f16.astype(np.float16).tobytes(), (8, 2)),
        ("q4_0.raw", q4_0, GGMLType.Q4_0, (64, 4), q4_0.tobytes(), (64, 4)),
        ("q8_0.raw", q8_0, GGMLType.Q8_0, (96,), q8_0.tobytes(), (96,)),
        ("q4_k.raw", q4_k, GGMLType.Q4_K, (256, 2), q4_k.tobytes(), (256, 2)),
        ("i32.vector", i32, GGMLType.I32, None, i32.tobytes(), (10,)),
        ("f32.four_d", four_d, GGMLType.F32, None, four_d.tobytes(), (4, 1, 3, 2)),
        ("later.q6_k", q6_k, GGMLType.Q6_K, (256, 3), q6_k.tobytes(), (256, 3)),  # made while the file is written
    ]


@pytest.fixture(scope="module", params=[32, 1, 256], ids=lambda alignment: f"align{alignment}")
def written(request, tmp_path_factory):
    writer = GGUFWriter(alignment=request.param)
    for key, value, options, _, _ in round_trip_metadata():
        writer.add(key, value, **options)
    writer.add(NESTED_KEY, NESTED_VALUE)
    for name, data, ggml_type, shape, _, _ in round_trip_tensors():
        if name.startswith("later."):
            writer.add_tensor_later(name, shape, ggml_type, lambda data=data: data)
        else:
            writer.add_tensor(name, data, ggml_type, shape=shape)
    path = tmp_path_factory.mktemp("written") / "round_trip.gguf"
    writer.write(path)
    return request.param, writer, path


def test_write_and_to_bytes_agree(written):
    _, writer, path = written
    assert path.read_bytes() == writer.to_bytes()


def test_written_metadata_reads_back(written):
    alignment, _, path = written
    with GGUFFile.open(path) as gguf_file:
        expected_keys = [case[0] for case in round_trip_metadata()] + [NESTED_KEY]
        assert list(gguf_file.metadata) == (["general.alignment"] if alignment != 32 else []) + expected_keys
        assert gguf_file.alignment == alignment
        for key, _, _, expected, types in round_trip_metadata():
            assert gguf_file.metadata_types[key] == types, key
            assert_same_value(gguf_file.metadata[key], expected)
            if isinstance(expected, np.ndarray):
                assert gguf_file.metadata[key].dtype == expected.dtype, key
        nested = gguf_file.metadata[NESTED_KEY]
        assert gguf_file.metadata_types[NESTED_KEY] == (V.ARRAY, V.ARRAY)
        assert np.array_equal(nested[0], [1, 2]) and nested[1] == ["x", "y"] and nested[2][0].tolist() == [True]


def test_written_metadata_reads_back_in_gguf_py(written):
    alignment, _, path = written
    fields = reference_fields(gguf.GGUFReader(path))
    if alignment != 32:
        assert fields.pop("general.alignment").contents() == alignment
    for key, _, _, expected, types in round_trip_metadata():
        field = fields.pop(key)
        if types == (V.ARRAY, V.INT16) and not len(expected):
            assert reference_types(field) == (V.ARRAY, None)  # gguf-py drops an empty array's item type
        else:
            assert reference_types(field) == types, key
        assert_same_value(expected, field.contents())
    assert [gguf.GGUFValueType(t).name for t in fields.pop(NESTED_KEY).types][:2] == ["ARRAY", "ARRAY"]
    assert fields == {}


def test_written_tensors_read_back_in_both_readers(written):
    alignment, _, path = written
    reference = {tensor.name: tensor for tensor in gguf.GGUFReader(path).tensors}
    with GGUFFile.open(path) as gguf_file:
        assert list(gguf_file.tensors) == [case[0] for case in round_trip_tensors()] == list(reference)
        for name, _, ggml_type, _, expected_bytes, expected_shape in round_trip_tensors():
            info, theirs = gguf_file.tensors[name], reference[name]
            assert (info.shape, info.ggml_type, info.nbytes) == (expected_shape, ggml_type, len(expected_bytes))
            assert tuple(theirs.shape.tolist()) == expected_shape and int(theirs.tensor_type) == ggml_type
            assert info.offset == theirs.data_offset and info.offset % alignment == 0
            assert gguf_file.tensor_data(name).tobytes() == expected_bytes == tensor_bytes(theirs).tobytes()


SCALAR_STRATEGIES = {
    **{value_type: st.integers(low, high) for value_type, (low, high) in INT_LIMITS.items()},
    V.FLOAT32: st.floats(width=32, allow_nan=False),
    V.FLOAT64: st.floats(allow_nan=False),
    V.BOOL: st.booleans(),
    V.STRING: st.text(max_size=20),
}


@st.composite
def metadata_entries(draw):
    value_type = draw(st.sampled_from(sorted(SCALAR_STRATEGIES) + [V.ARRAY]))
    if value_type != V.ARRAY:
        return value_type, None, draw(SCALAR_STRATEGIES[value_type])
    item_type = draw(st.sampled_from(sorted(SCALAR_STRATEGIES)))
    return value_type, item_type, draw(st.lists(SCALAR_STRATEGIES[item_type], max_size=8))


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(metadata_entries(), min_size=1, max_size=6))
@example(entries=[(V.ARRAY, V.UINT64, [0, 2**63])])  # found by CI: numpy made these ints float64
def test_random_metadata_round_trips_through_both_readers(tmp_path_factory, entries):
    writer = GGUFWriter()
    for index, (value_type, item_type, value) in enumerate(entries):
        writer.add(f"random.key{index}", value, value_type=value_type, item_type=item_type)
    path = tmp_path_factory.mktemp("random") / "random.gguf"
    writer.write(path)
    fields = reference_fields(gguf.GGUFReader(path))
    with GGUFFile.open(path) as gguf_file:
        for index, (value_type, item_type, value) in enumerate(entries):
            key = f"random.key{index}"
            ours, theirs = gguf_file.metadata[key], fields[key].contents()
            assert gguf_file.metadata_types[key] == (value_type, item_type)
            if item_type == V.STRING or value_type != V.ARRAY:
                assert ours == value == theirs
            else:
                assert ours.tolist() == value == theirs


# Writer input validation -------------------------------------------------------------------------------


def bad_writer_calls():
    def with_key(key, value, **options):
        def call(writer):
            writer.add(key, value, **options)
        return call

    def with_tensor(name, data, ggml_type, shape=None):
        def call(writer):
            writer.add_tensor(name, data, ggml_type, shape=shape)
        return call

    f32 = np.zeros(32, dtype=np.float32)
    return {
        "duplicate_key": lambda writer: (writer.add("a.b", 1), writer.add("a.b", 2)),
        "empty_key": with_key("", 1),
        "alignment_via_add": with_key("general.alignment", 64),
        "known_key_wrong_type": with_key("general.architecture", 5),
        "known_key_wrong_explicit_type": with_key("tokenizer.ggml.bos_token_id", 1, value_type=V.INT64),
        "uint8_out_of_range": with_key("a.b", 256, value_type=V.UINT8),
        "negative_uint32": with_key("a.b", -1, value_type=V.UINT32),
        "int_beyond_64_bits": with_key("a.b", 2**64),
        "float_as_int32": with_key("a.b", 1.5, value_type=V.INT32),
        "string_as_uint32": with_key("a.b", "7", value_type=V.UINT32),
        "int_as_bool": with_key("a.b", 1, value_type=V.BOOL),
        "int_as_string": with_key("a.b", 1, value_type=V.STRING),
        "empty_list_without_item_type": with_key("a.b", []),
        "mixed_list": with_key("a.b", ["a", 1]),
        "list_item_out_of_range": with_key("a.b", [1, 300], value_type=V.ARRAY, item_type=V.UINT8),
        "two_d_array": with_key("a.b", np.zeros((2, 2), dtype=np.int32)),
        "float16_array": with_key("a.b", np.zeros(2, dtype=np.float16)),
        "unsupported_value": with_key("a.b", {"x": 1}),
        "duplicate_tensor": lambda writer: (writer.add_tensor("t", f32, GGMLType.F32),
                                            writer.add_tensor("t", f32, GGMLType.F32)),
        "tensor_name_empty": with_tensor("", f32, GGMLType.F32),
        "tensor_name_64_bytes": with_tensor("x" * 64, f32, GGMLType.F32),
        "quantized_from_floats": with_tensor("t", f32, GGMLType.Q4_0),
        "raw_bytes_without_shape": with_tensor("t", np.zeros(18, np.uint8), GGMLType.Q4_0),
        "raw_bytes_wrong_size": with_tensor("t", np.zeros(17, np.uint8), GGMLType.Q4_0, shape=(32,)),
        "row_not_multiple_of_block": with_tensor("t", np.zeros(18, np.uint8), GGMLType.Q4_0, shape=(16, 2)),
        "shape_does_not_hold_values": with_tensor("t", f32, GGMLType.F32, shape=(8, 2)),
        "five_dims": with_tensor("t", np.zeros((1, 1, 1, 1, 2), np.float32), GGMLType.F32),
        "zero_dim": with_tensor("t", np.zeros((0, 2), np.float32), GGMLType.F32),
        "later_bytes_wrong_size": lambda writer: (
            writer.add_tensor_later("t", (32,), GGMLType.Q4_0, lambda: np.zeros(17, np.uint8)), writer.to_bytes()),
        "later_row_not_multiple_of_block": lambda writer: writer.add_tensor_later("t", (16, 2), GGMLType.Q4_0, bytes),
    }


@pytest.mark.parametrize("call", list(bad_writer_calls().values()), ids=list(bad_writer_calls()))
def test_writer_refuses_bad_input(call):
    with pytest.raises(ModelFormatError):
        call(GGUFWriter())


@pytest.mark.parametrize("alignment", [0, 3, 48, -32])
def test_writer_refuses_bad_alignment(alignment):
    with pytest.raises(ModelFormatError, match="power of two"):
        GGUFWriter(alignment=alignment)
