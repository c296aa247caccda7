"""GGUF writer: builds version-3 little-endian GGUF files that our reader and llama.cpp accept.

Keys and tensors are written in the order they are added. Tensor data is laid out back to back,
each tensor starting on the alignment and padded with zeros.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeproots.errors import ModelFormatError
from deeproots.formats.gguf import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    KNOWN_KEY_TYPES,
    MAX_DIMS,
    MAX_TENSOR_NAME_BYTES,
    SCALAR_DTYPES,
    SCALAR_STRUCTS,
    GGUFValueType,
    align_up,
    is_power_of_two,
)
from deeproots.quant.types import BLOCK_GEOMETRY, GGMLType, tensor_nbytes

WRITTEN_VERSION = 3

# GGML types whose values are plain numbers, so a numeric array can be converted to them.
_NATIVE_TENSOR_DTYPES: dict[GGMLType, np.dtype] = {
    GGMLType.F32: np.dtype("<f4"),
    GGMLType.F16: np.dtype("<f2"),
    GGMLType.F64: np.dtype("<f8"),
    GGMLType.I8: np.dtype("<i1"),
    GGMLType.I16: np.dtype("<i2"),
    GGMLType.I32: np.dtype("<i4"),
    GGMLType.I64: np.dtype("<i8"),
}
# Smallest integer type holding a value, tried in this order.
_INTEGER_TYPES = (GGUFValueType.INT32, GGUFValueType.UINT32, GGUFValueType.INT64, GGUFValueType.UINT64)
_DTYPE_TO_VALUE_TYPE = {dtype: value_type for value_type, dtype in SCALAR_DTYPES.items()
                        if value_type != GGUFValueType.BOOL} | {np.dtype(np.bool_): GGUFValueType.BOOL}
_INTEGER_VALUE_TYPES = {value_type for value_type, dtype in SCALAR_DTYPES.items()
                        if dtype.kind in "iu" and value_type != GGUFValueType.BOOL}


def _integer_range(value_type: GGUFValueType) -> tuple[int, int]:
    info = np.iinfo(SCALAR_DTYPES[value_type])
    return int(info.min), int(info.max)


def _smallest_integer_type(low: int, high: int, key: str) -> GGUFValueType:
    for value_type in _INTEGER_TYPES:
        minimum, maximum = _integer_range(value_type)
        if minimum <= low and high <= maximum:
            return value_type
    raise ModelFormatError(f"integer {high if high > 0 else low} does not fit in 64 bits", field=key)


def _infer_scalar_type(value: Any, key: str) -> GGUFValueType:
    """bool -> BOOL, int -> INT32, UINT32, INT64 or UINT64 (the first that holds it),
    float -> FLOAT32, str -> STRING, numpy scalar -> its own dtype, sequence -> ARRAY."""
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, np.generic) and value.dtype.newbyteorder("<") in _DTYPE_TO_VALUE_TYPE:
        return _DTYPE_TO_VALUE_TYPE[value.dtype.newbyteorder("<")]
    if isinstance(value, int):
        return _smallest_integer_type(value, value, key)
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise ModelFormatError(f"cannot store a {type(value).__name__} in GGUF metadata", field=key)


def _infer_item_type(values: Any, key: str) -> GGUFValueType:
    """The item type of an array: a numpy array's dtype, else the one type all items share."""
    if isinstance(values, np.ndarray):
        dtype = values.dtype.newbyteorder("<")
        if dtype not in _DTYPE_TO_VALUE_TYPE:
            raise ModelFormatError(f"numpy dtype {values.dtype} has no GGUF value type", field=key)
        return _DTYPE_TO_VALUE_TYPE[dtype]
    if not values:
        raise ModelFormatError("an empty array needs an explicit item_type", field=key)
    item_types = {_infer_scalar_type(item, key) for item in values}
    if item_types <= _INTEGER_VALUE_TYPES:
        return _smallest_integer_type(min(values), max(values), key)
    if item_types <= _INTEGER_VALUE_TYPES | {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}:
        return GGUFValueType.FLOAT32
    if len(item_types) == 1:
        return item_types.pop()
    raise ModelFormatError(f"array mixes item types {sorted(t.name for t in item_types)}", field=key)


def _encode_string(text: Any, key: str) -> bytes:
    if not isinstance(text, str):
        raise ModelFormatError(f"STRING value must be a str, got {type(text).__name__}", field=key)
    raw = text.encode("utf-8")
    return SCALAR_STRUCTS[GGUFValueType.UINT64].pack(len(raw)) + raw


def _encode_numbers(values: Any, value_type: GGUFValueType, key: str) -> bytes:
    """Numbers or bools (a scalar is a one-item list), checked to fit the type without loss of kind."""
    array = np.asarray(values)
    kind = array.dtype.kind
    if (value_type in _INTEGER_VALUE_TYPES and kind == "f" and isinstance(values, (list, tuple))
            and all(type(value) is int for value in values)):
        # numpy turns Python ints beyond int64 (e.g. [0, 2**63]) into float64; keep them exact for the checks.
        array, kind = np.array(values, dtype=object), "i"
    if array.ndim != 1:
        raise ModelFormatError(f"{value_type.name} values must form a flat list, got shape {array.shape}", field=key)
    if value_type == GGUFValueType.BOOL:
        allowed_kinds = "b"
    elif value_type in _INTEGER_VALUE_TYPES:
        allowed_kinds = "iu"
    else:
        allowed_kinds = "iuf"
    if array.size and kind not in allowed_kinds:
        raise ModelFormatError(f"{array.dtype} values cannot be stored as {value_type.name}", field=key)
    if array.size and value_type in _INTEGER_VALUE_TYPES:
        minimum, maximum = _integer_range(value_type)
        if array.min() < minimum or array.max() > maximum:
            raise ModelFormatError(f"values outside {value_type.name} range [{minimum}, {maximum}]", field=key)
    return array.astype(SCALAR_DTYPES[value_type]).tobytes()


def _encode_value(value: Any, value_type: GGUFValueType, item_type: GGUFValueType | None, key: str) -> bytes:
    if value_type == GGUFValueType.STRING:
        return _encode_string(value, key)
    if value_type == GGUFValueType.ARRAY:
        return _encode_array(value, item_type, key)
    return _encode_numbers([value], value_type, key)


def _encode_array(values: Any, item_type: GGUFValueType | None, key: str) -> bytes:
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise ModelFormatError(f"ARRAY value must be a list, tuple or numpy array, got {type(values).__name__}",
                               field=key)
    item_type = _infer_item_type(values, key) if item_type is None else GGUFValueType(item_type)
    head = SCALAR_STRUCTS[GGUFValueType.UINT32].pack(item_type) + SCALAR_STRUCTS[GGUFValueType.UINT64].pack(len(values))
    if item_type == GGUFValueType.STRING:
        return head + b"".join(_encode_string(item, key) for item in values)
    if item_type == GGUFValueType.ARRAY:
        return head + b"".join(_encode_array(item, None, key) for item in values)
    return head + _encode_numbers(values, item_type, key)


@dataclass(frozen=True)
class _PendingTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLType
    nbytes: int
    data: Callable[[], bytes | np.ndarray]  # the stored bytes, asked for when the file is written


class GGUFWriter:
    """Collects metadata and tensors, then serialises them with to_bytes() or write(path).

    An alignment other than the default is recorded as `general.alignment`, which is therefore
    set by the constructor only, never by add().
    """

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT):
        if not is_power_of_two(alignment):
            raise ModelFormatError(f"alignment {alignment} is not a non-zero power of two", field="general.alignment")
        self.alignment = alignment
        self._kv: dict[str, bytes] = {}  # key -> encoded type and value
        self._tensors: dict[str, _PendingTensor] = {}
        if alignment != DEFAULT_ALIGNMENT:
            self._kv["general.alignment"] = self._encode_kv("general.alignment", alignment, GGUFValueType.UINT32, None)

    def add(self, key: str, value: Any, value_type: GGUFValueType | None = None,
            item_type: GGUFValueType | None = None) -> None:
        """Adds one key. Without value_type, a well-known key gets its standard type and any other
        key gets a type inferred from the value: bool -> BOOL; int -> INT32, else UINT32, INT64,
        UINT64 (the first that holds it); float -> FLOAT32; str -> STRING; list or tuple -> ARRAY of
        the items' common type (ints as above, ints mixed with floats -> FLOAT32); 1-D numpy array ->
        ARRAY of its dtype; numpy scalar -> its dtype. An empty array needs item_type."""
        if not key:
            raise ModelFormatError("empty key", field=key)
        if key in self._kv:
            raise ModelFormatError("duplicate key", field=key)
        if key == "general.alignment":
            raise ModelFormatError("set the alignment with GGUFWriter(alignment=...)", field=key)
        known_type, known_item_type = KNOWN_KEY_TYPES.get(key, (None, None))
        value_type = value_type if value_type is not None else known_type
        if value_type is None:
            value_type = _infer_scalar_type(value, key)
        item_type = item_type if item_type is not None else known_item_type
        if known_type is not None and (value_type, item_type) != (known_type, known_item_type):
            raise ModelFormatError(f"{key} must be {known_type.name}"
                                   + (f" of {known_item_type.name}" if known_item_type else ""), field=key)
        self._kv[key] = self._encode_kv(key, value, GGUFValueType(value_type), item_type)

    @staticmethod
    def _encode_kv(key: str, value: Any, value_type: GGUFValueType, item_type: GGUFValueType | None) -> bytes:
        return SCALAR_STRUCTS[GGUFValueType.UINT32].pack(value_type) + _encode_value(value, value_type, item_type, key)

    def add_tensor(self, name: str, data: np.ndarray, ggml_type: GGMLType,
                   shape: tuple[int, ...] | None = None) -> None:
        """Adds a tensor. `data` is a numeric array for F32/F16/F64/I8..I64 (converted to that type;
        shape defaults to the array's shape reversed into GGUF order), or raw uint8 bytes for any
        type (then `shape`, in GGUF order, is required)."""
        ggml_type = GGMLType(ggml_type)
        data = np.asarray(data)
        native_dtype = _NATIVE_TENSOR_DTYPES.get(ggml_type)
        if data.dtype != np.uint8 and native_dtype is not None:
            shape = tuple(reversed(data.shape)) if shape is None else tuple(shape)
            if math.prod(shape) != data.size:
                raise ModelFormatError(f"shape {shape} does not hold {data.size} values", field=name)
            data = np.ascontiguousarray(data, dtype=native_dtype)
        elif data.dtype != np.uint8:
            raise ModelFormatError(f"{ggml_type.name} data must be raw uint8 bytes, got {data.dtype}", field=name)
        elif shape is None:
            raise ModelFormatError("raw byte data needs an explicit shape in GGUF order", field=name)
        stored = np.ascontiguousarray(data).tobytes()
        self._add(name, shape, ggml_type, data.nbytes, lambda: stored)

    def add_tensor_later(self, name: str, shape: tuple[int, ...], ggml_type: GGMLType,
                         data: Callable[[], np.ndarray]) -> None:
        """Adds a tensor whose raw uint8 bytes `data()` makes while the file is written, one tensor at a time, so
        a file of many GB never sits in memory whole (benchmarks/synthetic_models.py writes random weights so)."""
        ggml_type = GGMLType(ggml_type)
        self._add(name, shape, ggml_type, tensor_nbytes(ggml_type, math.prod(shape)), data)

    def _add(self, name: str, shape: tuple[int, ...], ggml_type: GGMLType, nbytes: int,
             data: Callable[[], bytes | np.ndarray]) -> None:
        encoded_name = name.encode("utf-8")
        if not encoded_name or len(encoded_name) > MAX_TENSOR_NAME_BYTES:
            raise ModelFormatError(f"tensor name must be 1..{MAX_TENSOR_NAME_BYTES} bytes", field=name)
        if name in self._tensors:
            raise ModelFormatError("duplicate tensor name", field=name)
        shape = tuple(int(dim) for dim in shape)
        if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
            raise ModelFormatError(f"shape {shape} must have 1..{MAX_DIMS} dimensions, each >= 1", field=name)
        block_size = BLOCK_GEOMETRY[ggml_type].block_size
        if shape[0] % block_size:
            raise ModelFormatError(f"row length {shape[0]} is not a multiple of the block size {block_size}",
                                   field=name)
        expected = tensor_nbytes(ggml_type, math.prod(shape))
        if nbytes != expected:
            raise ModelFormatError(f"{ggml_type.name} tensor of shape {shape} takes {expected} bytes, "
                                   f"got {nbytes}", field=name)
        self._tensors[name] = _PendingTensor(name, shape, ggml_type, nbytes, data)

    def _chunks(self) -> Iterator[bytes]:
        u32, u64 = SCALAR_STRUCTS[GGUFValueType.UINT32], SCALAR_STRUCTS[GGUFValueType.UINT64]
        header = [GGUF_MAGIC, u32.pack(WRITTEN_VERSION), u64.pack(len(self._tensors)), u64.pack(len(self._kv))]
        header += [_encode_string(key, key) + encoded for key, encoded in self._kv.items()]
        offset = 0
        for tensor in self._tensors.values():
            header.append(_encode_string(tensor.name, tensor.name) + u32.pack(len(tensor.shape))
                          + b"".join(u64.pack(dim) for dim in tensor.shape)
                          + u32.pack(tensor.ggml_type) + u64.pack(offset))
            offset = align_up(offset + tensor.nbytes, self.alignment)
        head = b"".join(header)
        yield head + bytes(align_up(len(head), self.alignment) - len(head))
        for tensor in self._tensors.values():
            data = memoryview(tensor.data()).cast("B")
            if data.nbytes != tensor.nbytes:
                raise ModelFormatError(f"tensor data of {data.nbytes} bytes, the shape takes {tensor.nbytes}",
                                       field=tensor.name)
            yield data
            yield bytes(align_up(tensor.nbytes, self.alignment) - tensor.nbytes)

    def to_bytes(self) -> bytes:
        return b"".join(self._chunks())

    def write(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as file:
            for chunk in self._chunks():
                file.write(chunk)
