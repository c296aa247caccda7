"""GGUF reader: a validated, lazy, memory-mapped view of a GGUF model file.

Layout (little-endian): magic "GGUF", uint32 version, uint64 tensor count, uint64 key-value count,
the key-value pairs, one info record per tensor, padding to the alignment, then the tensor data.
Nothing read from the file is trusted: every count, length, size and offset is bounded by the bytes
that remain before it is used, so a malformed file raises ModelFormatError (naming the field and the
byte offset) instead of crashing, hanging or allocating more than the file holds. Opening reads only
the header pages of the mapping; tensor bytes are touched only through `tensor_data`.

Error fields: "magic", "version", "tensor_count", "kv_count", "kv[i].key", the key itself (or
"key[j]" inside an array), "tensor[i].name", and "<tensor name>.n_dims/.shape/.type/.offset".
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from deeproots.errors import (DeeprootsError, ModelFormatError, ModelNotFoundError, TensorNotFoundError,
                              UnsupportedModelError)
from deeproots.quant.types import BLOCK_GEOMETRY, GGMLType, tensor_nbytes

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # version 1 used 32-bit counts and lengths
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL
MAX_KEY_BYTES = 65535  # the GGUF spec's limit on key length
MAX_STRING_BYTES = 1 << 28  # far above any real chat template or token, far below a bogus length
MAX_ARRAY_LENGTH = 1 << 24  # vocabularies are ~10^5..10^6 entries
MAX_ARRAY_DEPTH = 4  # arrays of arrays nest at most this deep
# String arrays this long (vocabularies, merges) are checked in place but decoded after the rest of the header, so
# that the header's long-lived small objects (keys, value types, tensor infos) are not allocated among their ~10^5
# strings: when a caller drops the arrays (Model does, once its tokenizer is built) whole allocator arenas go back
# to the OS instead of staying pinned by a few survivors (2-3 MB of resident memory on the default model).
DEFER_STRING_ARRAYS_FROM = 1024
MAX_ELEMENTS = (1 << 63) - 1  # a tensor's element count must fit in int64, as in ggml


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


ValueTypes = tuple[GGUFValueType, GGUFValueType | None]  # (value type, array item type or None)

# Little-endian numpy dtype of every fixed-size value type (BOOL is one byte, 0 or 1).
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
SCALAR_STRUCTS: dict[GGUFValueType, struct.Struct] = {
    value_type: struct.Struct("<" + code)
    for value_type, code in zip(SCALAR_DTYPES, ["B", "b", "H", "h", "I", "i", "f", "B", "Q", "q", "d"])
}

# Keys whose type every GGUF writer agrees on: (value type, array item type or None).
KNOWN_KEY_TYPES: dict[str, ValueTypes] = {
    "general.alignment": (GGUFValueType.UINT32, None),
    "general.architecture": (GGUFValueType.STRING, None),
    "general.name": (GGUFValueType.STRING, None),
    "general.file_type": (GGUFValueType.UINT32, None),
    "general.quantization_version": (GGUFValueType.UINT32, None),
    "tokenizer.ggml.model": (GGUFValueType.STRING, None),
    "tokenizer.ggml.pre": (GGUFValueType.STRING, None),
    "tokenizer.ggml.tokens": (GGUFValueType.ARRAY, GGUFValueType.STRING),
    "tokenizer.ggml.merges": (GGUFValueType.ARRAY, GGUFValueType.STRING),
    "tokenizer.ggml.scores": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
    "tokenizer.ggml.token_type": (GGUFValueType.ARRAY, GGUFValueType.INT32),
    "tokenizer.ggml.bos_token_id": (GGUFValueType.UINT32, None),
    "tokenizer.ggml.eos_token_id": (GGUFValueType.UINT32, None),
    "tokenizer.ggml.unknown_token_id": (GGUFValueType.UINT32, None),
    "tokenizer.ggml.padding_token_id": (GGUFValueType.UINT32, None),
    "tokenizer.chat_template": (GGUFValueType.STRING, None),
}

_U32 = SCALAR_STRUCTS[GGUFValueType.UINT32]
_U64 = SCALAR_STRUCTS[GGUFValueType.UINT64]
_SHAPE_LAYOUTS = {n_dims: struct.Struct(f"<{n_dims}Q") for n_dims in range(1, MAX_DIMS + 1)}
_TYPES_WITH_GEOMETRY = {int(ggml_type) for ggml_type in BLOCK_GEOMETRY}
# Smallest possible encodings, used to bound counts before anything is allocated.
_MIN_VALUE_BYTES = {**{t: d.itemsize for t, d in SCALAR_DTYPES.items()},
                    GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 4 + 8}
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, 1-byte name, n_dims, one dim, type, offset


def is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (row length), as in the file
    ggml_type: int  # a GGMLType when known; the raw int when the type is unknown
    offset: int  # absolute byte offset in the file
    nbytes: int | None  # None only when the type is unknown

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class _Header:
    version: int
    metadata: dict[str, Any]
    metadata_types: dict[str, ValueTypes]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int


class _HeaderParser:
    """Reads the header fields in order from a buffer, bounding every read by the bytes left."""

    def __init__(self, buf: Any, size: int):
        self.buf = buf
        self.size = size
        self.pos = 0
        self.deferred: list[tuple[list[str], int, str]] = []  # (array to fill, where its strings start, field)

    def fail(self, message: str, field: str, offset: int | None = None) -> ModelFormatError:
        return ModelFormatError(message, field=field, offset=self.pos if offset is None else offset)

    def need(self, n_bytes: int, field: str) -> None:
        if n_bytes > self.size - self.pos:
            raise self.fail(f"file is truncated: {n_bytes} bytes needed, {self.size - self.pos} left", field)

    def unpack_many(self, layout: struct.Struct, field: str) -> tuple[Any, ...]:
        self.need(layout.size, field)
        values = layout.unpack_from(self.buf, self.pos)
        self.pos += layout.size
        return values

    def unpack(self, layout: struct.Struct, field: str) -> Any:
        return self.unpack_many(layout, field)[0]

    def string(self, field: str, max_bytes: int = MAX_STRING_BYTES) -> str:
        start = self.pos
        length = self.unpack(_U64, field)
        if length > max_bytes:
            raise self.fail(f"string length {length} exceeds the limit of {max_bytes} bytes", field, start)
        self.need(length, field)
        raw = self.buf[self.pos:self.pos + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.fail(f"string is not valid UTF-8 ({error.reason})", field, self.pos + error.start) from None
        self.pos += length
        return text

    def value_type(self, field: str) -> GGUFValueType:
        start = self.pos
        raw = self.unpack(_U32, field)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"unknown value type {raw}", field, start) from None

    def value(self, value_type: GGUFValueType, field: str) -> tuple[Any, GGUFValueType | None]:
        """Returns the value and, for arrays, the item type."""
        if value_type == GGUFValueType.STRING:
            return self.string(field), None
        if value_type == GGUFValueType.ARRAY:
            return self.array(field, depth=1)
        start = self.pos
        value = self.unpack(SCALAR_STRUCTS[value_type], field)
        if value_type == GGUFValueType.BOOL:
            if value > 1:
                raise self.fail(f"bool must be 0 or 1, found {value}", field, start)
            value = bool(value)
        return value, None

    def array(self, field: str, depth: int) -> tuple[Any, GGUFValueType]:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"arrays nest deeper than {MAX_ARRAY_DEPTH} levels", field)
        item_type = self.value_type(field)
        count_offset = self.pos
        count = self.unpack(_U64, field)
        if count > MAX_ARRAY_LENGTH:
            raise self.fail(f"array length {count} exceeds the limit of {MAX_ARRAY_LENGTH}", field, count_offset)
        if count * _MIN_VALUE_BYTES[item_type] > self.size - self.pos:
            raise self.fail(f"array of {count} {item_type.name} values cannot fit in the "
                            f"{self.size - self.pos} bytes left", field, count_offset)
        if item_type == GGUFValueType.STRING:
            return self.string_array(count, field), item_type
        if item_type == GGUFValueType.ARRAY:
            return [self.array(f"{field}[{i}]", depth + 1)[0] for i in range(count)], item_type
        return self.number_array(item_type, count, field), item_type

    def number_array(self, item_type: GGUFValueType, count: int, field: str) -> np.ndarray:
        dtype = SCALAR_DTYPES[item_type]
        # A copy, so metadata outlives the mapping and does not pin it open.
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        if item_type == GGUFValueType.BOOL:
            if count and values.max() > 1:
                bad = int(np.argmax(values > 1))
                raise self.fail(f"bool must be 0 or 1, found {values[bad]}", f"{field}[{bad}]", self.pos + bad)
            values = values.view(np.bool_)
        self.pos += count * dtype.itemsize
        return values

    def string_array(self, count: int, field: str) -> list[str]:
        strings = [""] * count
        start, self.pos = self.pos, self._skip_strings(count, field)  # every length checked here, once
        if count < DEFER_STRING_ARRAYS_FROM:
            self._decode_strings(strings, start, field)
        else:
            self.deferred.append((strings, start, field))
        return strings

    def decode_deferred(self) -> None:
        """Fill in the long string arrays string_array only checked the lengths of."""
        for strings, pos, field in self.deferred:
            self._decode_strings(strings, pos, field)
        self.deferred.clear()

    def _skip_strings(self, count: int, field: str) -> int:
        """Where `count` strings starting at self.pos end, each length checked against the limit and the file."""
        buf, end, pos = self.buf, self.size, self.pos
        unpack_length = _U64.unpack_from
        for index in range(count):
            if end - pos < 8:
                raise self.fail("file is truncated inside a string length", f"{field}[{index}]", pos)
            (length,) = unpack_length(buf, pos)
            if length > MAX_STRING_BYTES or length > end - pos - 8:
                raise self.fail(f"string length {length} exceeds the limit or the bytes left",
                                f"{field}[{index}]", pos)
            pos += 8 + length
        return pos

    def _decode_strings(self, strings: list[str], pos: int, field: str) -> None:
        """Decode len(strings) strings starting at `pos` into `strings`; _skip_strings checked their lengths."""
        # The hot loop of a header read (vocabularies, merges): locals only.
        buf = self.buf
        unpack_length = _U64.unpack_from
        index = 0
        try:
            for index in range(len(strings)):
                (length,) = unpack_length(buf, pos)
                pos += 8
                strings[index] = buf[pos:pos + length].decode("utf-8")
                pos += length
        except UnicodeDecodeError as error:
            raise self.fail(f"string is not valid UTF-8 ({error.reason})", f"{field}[{index}]",
                            pos + error.start) from None


def _parse_prologue(parser: _HeaderParser) -> tuple[int, int, int]:
    """Magic, version and the two counts, each count bounded by the bytes that follow."""
    parser.need(4, "magic")
    magic = bytes(parser.buf[0:4])
    if magic != GGUF_MAGIC:
        raise parser.fail(f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}", "magic", 0)
    parser.pos = 4
    version = parser.unpack(_U32, "version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in SUPPORTED_VERSIONS:
            raise UnsupportedModelError("big-endian GGUF files are not supported; convert the model "
                                        "on a little-endian machine")
        if version == 1:
            raise UnsupportedModelError("GGUF version 1 (2023 pre-release format) is not supported; "
                                        "re-convert the model with a current llama.cpp")
        raise parser.fail(f"unsupported GGUF version {version}; supported: {SUPPORTED_VERSIONS}", "version", 4)
    tensor_count = parser.unpack(_U64, "tensor_count")
    kv_count = parser.unpack(_U64, "kv_count")
    left = parser.size - parser.pos
    if kv_count * _MIN_KV_BYTES > left:
        raise parser.fail(f"{kv_count} key-value pairs cannot fit in the {left} bytes left", "kv_count", 16)
    if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > left:
        raise parser.fail(f"{tensor_count} tensor infos cannot fit in the {left} bytes left", "tensor_count", 8)
    return version, tensor_count, kv_count


def _describe(types: ValueTypes) -> str:
    return types[0].name if types[1] is None else f"{types[0].name} of {types[1].name}"


def _check_known_key(key: str, found: ValueTypes, offset: int) -> None:
    expected = KNOWN_KEY_TYPES.get(key)
    if expected is not None and found != expected:
        raise ModelFormatError(f"key has type {_describe(found)}, expected {_describe(expected)}",
                               field=key, offset=offset)


def _parse_metadata(parser: _HeaderParser, kv_count: int) -> tuple[dict[str, Any], dict[str, ValueTypes]]:
    metadata: dict[str, Any] = {}
    metadata_types: dict[str, ValueTypes] = {}
    for index in range(kv_count):
        key_offset = parser.pos
        key = parser.string(f"kv[{index}].key", MAX_KEY_BYTES)
        if not key:
            raise parser.fail("empty key", f"kv[{index}].key", key_offset)
        if key in metadata:
            raise parser.fail("duplicate key", key, key_offset)
        type_offset = parser.pos
        value_type = parser.value_type(key)
        value, item_type = parser.value(value_type, key)
        _check_known_key(key, (value_type, item_type), type_offset)
        if key == "general.alignment" and not is_power_of_two(value):
            raise parser.fail(f"alignment {value} is not a non-zero power of two", key, type_offset)
        metadata[key] = value
        metadata_types[key] = (value_type, item_type)
    return metadata, metadata_types


@dataclass
class _RawTensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    relative_offset: int  # from the start of the data section
    shape_at: int  # where the shape and the offset fields sit in the file, for error messages
    offset_at: int


def _parse_tensor_infos(parser: _HeaderParser, tensor_count: int) -> list[_RawTensorInfo]:
    infos: list[_RawTensorInfo] = []
    names: set[str] = set()
    for index in range(tensor_count):
        name_at = parser.pos
        name = parser.string(f"tensor[{index}].name", MAX_TENSOR_NAME_BYTES)
        if not name:
            raise parser.fail("empty tensor name", f"tensor[{index}].name", name_at)
        if name in names:
            raise parser.fail(f"duplicate tensor name {name!r}", f"tensor[{index}].name", name_at)
        names.add(name)
        n_dims_at = parser.pos
        n_dims = parser.unpack(_U32, f"{name}.n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise parser.fail(f"tensor has {n_dims} dimensions, expected 1..{MAX_DIMS}", f"{name}.n_dims", n_dims_at)
        shape_at = parser.pos
        shape = parser.unpack_many(_SHAPE_LAYOUTS[n_dims], f"{name}.shape")
        if min(shape) < 1:
            raise parser.fail(f"tensor shape {shape} has an empty dimension", f"{name}.shape", shape_at)
        if math.prod(shape) > MAX_ELEMENTS:
            raise parser.fail(f"tensor shape {shape} has more than 2^63-1 elements", f"{name}.shape", shape_at)
        ggml_type = parser.unpack(_U32, f"{name}.type")
        offset_at = parser.pos
        relative_offset = parser.unpack(_U64, f"{name}.offset")
        infos.append(_RawTensorInfo(name, shape, ggml_type, relative_offset, shape_at, offset_at))
    return infos


def _place_tensor(raw: _RawTensorInfo, alignment: int, data_offset: int, file_size: int) -> TensorInfo:
    """Checks one tensor's type, row length, alignment and that its data lies inside the file.

    A tensor of an unknown type has an unknown size: it is kept, so the metadata and tensor list
    stay readable, and only the start of its data is checked.
    """
    name = raw.name
    if raw.relative_offset % alignment:
        raise ModelFormatError(f"tensor data offset {raw.relative_offset} is not a multiple of the "
                               f"alignment {alignment}", field=f"{name}.offset", offset=raw.offset_at)
    start = data_offset + raw.relative_offset
    if raw.ggml_type not in _TYPES_WITH_GEOMETRY:
        if start >= file_size:
            raise ModelFormatError(f"tensor data starts at byte {start}, past the end of the file "
                                   f"({file_size} bytes)", field=f"{name}.offset", offset=raw.offset_at)
        return TensorInfo(name, raw.shape, raw.ggml_type, start, None)
    ggml_type = GGMLType(raw.ggml_type)
    block_size = BLOCK_GEOMETRY[ggml_type].block_size
    if raw.shape[0] % block_size:
        raise ModelFormatError(f"row length {raw.shape[0]} is not a multiple of the {ggml_type.name} "
                               f"block size {block_size}", field=f"{name}.shape", offset=raw.shape_at)
    nbytes = tensor_nbytes(ggml_type, math.prod(raw.shape))
    if start + nbytes > file_size:
        raise ModelFormatError(f"tensor data [{start}, {start + nbytes}) runs past the end of the file "
                               f"({file_size} bytes)", field=f"{name}.offset", offset=raw.offset_at)
    return TensorInfo(name, raw.shape, ggml_type, start, nbytes)


def _check_no_overlap(tensors: list[TensorInfo], offset_fields: dict[str, int]) -> None:
    """Tensors of unknown type are left out: their extent is unknown, and guessing could refuse good files."""
    extents = sorted((info.offset, info.offset + info.nbytes, info.name) for info in tensors if info.nbytes)
    for (previous_start, previous_end, previous), (start, end, name) in zip(extents, extents[1:]):
        if start < previous_end:
            raise ModelFormatError(f"tensor data [{start}, {end}) overlaps tensor {previous!r} at "
                                   f"[{previous_start}, {previous_end})", field=f"{name}.offset",
                                   offset=offset_fields[name])


def _parse_header(buf: Any, size: int) -> _Header:
    parser = _HeaderParser(buf, size)
    version, tensor_count, kv_count = _parse_prologue(parser)
    metadata, metadata_types = _parse_metadata(parser, kv_count)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    infos = _parse_tensor_infos(parser, tensor_count)
    data_offset = align_up(parser.pos, alignment)
    tensors = [_place_tensor(raw, alignment, data_offset, size) for raw in infos]
    _check_no_overlap(tensors, {raw.name: raw.offset_at for raw in infos})
    tensors_by_name = {info.name: info for info in tensors}
    parser.decode_deferred()
    return _Header(version, metadata, metadata_types, tensors_by_name, alignment, data_offset)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a GGUF file without its tensors: what a tokenizer or a chat template needs, readable from a
    file whose tensor data is cut off (GGUFFile.open refuses such a file, naming the first tensor past its end)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            parser = _HeaderParser(mapping, len(mapping))
            _, _, kv_count = _parse_prologue(parser)
            metadata, _ = _parse_metadata(parser, kv_count)
            parser.decode_deferred()
            return metadata
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        raise ModelNotFoundError(f"no model file at {path!r}: {error.strerror}") from None
    except ValueError as error:  # mmap of an empty file
        raise ModelFormatError("file is empty", field="magic", offset=0) from error


class GGUFFile:
    """An open GGUF file: parsed metadata and tensor infos over a read-only memory map.

    Use as a context manager, or call close(). Arrays returned by tensor_data are views of the
    mapping; if any are still alive at close(), the mapping is released when the last one goes.
    """

    def __init__(self, path: str, mapping: mmap.mmap | None, file_size: int, header: _Header):
        self.path = path
        self.file_size = file_size
        self.version = header.version
        self.metadata = header.metadata
        self.metadata_types = header.metadata_types  # key -> (value type, array item type or None)
        self.tensors = header.tensors
        self.alignment = header.alignment
        self.data_offset = header.data_offset
        self._mapping = mapping

    @classmethod
    def open(cls, path: str | os.PathLike) -> GGUFFile:
        path = os.fspath(path)
        try:
            with open(path, "rb") as file:
                file_size = os.fstat(file.fileno()).st_size
                if file_size == 0:  # mmap refuses empty files
                    raise ModelFormatError("file is empty", field="magic", offset=0)
                mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ModelNotFoundError(f"no model file at {path!r}: {error.strerror}") from None
        try:
            header = _parse_header(mapping, file_size)
        except BaseException:
            mapping.close()
            raise
        return cls(path, mapping, file_size, header)

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's raw bytes as a zero-copy, read-only uint8 view of the file."""
        info = self.tensors.get(name)
        if info is None:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.path}")
        if info.nbytes is None:
            raise UnsupportedModelError(f"tensor {name!r} has GGML type {info.ggml_type}, which deeproots "
                                        f"does not know; its size and layout are unknown")
        if self._mapping is None:
            raise DeeprootsError(f"{self.path} is closed")
        return np.frombuffer(self._mapping, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def release_pages(self) -> None:
        """Drop the file's pages from this process's resident memory (after weights were repacked).

        Views stay valid: a later read faults its pages back in from the page cache.
        """
        if self._mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:
                pass  # views from tensor_data are alive; the map is unmapped when the last one dies
            self._mapping = None

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, version={self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")


def __getattr__(name: str) -> Any:
    # The writer lives in its own module; it is importable from here too, loaded on first use
    # because it imports this module's definitions.
    if name == "GGUFWriter":
        from deeproots.formats.gguf_writer import GGUFWriter

        return GGUFWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
