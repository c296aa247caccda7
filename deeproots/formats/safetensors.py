"""Safetensors reader: a validated, memory-mapped view of Hugging Face checkpoint files.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section.
The JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative
to the data section) plus an optional "__metadata__" of string -> string. The checks follow HF's
`safetensors` (Rust) reader: header at most 100 MB, sizes equal dtype bits x elements / 8, and the
tensors, sorted by offset, tile the data section exactly (no gaps, overlaps or trailing bytes).
Stricter than HF: duplicate JSON keys and more than 8 dimensions are refused.

Errors raise ModelFormatError naming the field ("header_length", "header", "__metadata__",
"<tensor>.dtype/.shape/.data_offsets", "data") and the byte offset (of the key in the header where
it can be found, else of the header's start).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from deeproots.errors import (
    DeeprootsError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)

MAX_HEADER_BYTES = 100_000_000  # HF's own limit
MAX_INDEX_BYTES = 100_000_000
MAX_DIMS = 8
HEADER_START = 8  # the JSON follows the 8-byte length
METADATA_KEY = "__metadata__"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Bits per element of every dtype HF's format defines, so sizes are checked even for dtypes we cannot view.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16, "U32": 32, "I32": 32, "F32": 32,
    "U64": 64, "I64": 64, "F64": 64, "C64": 64,
}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class SafetensorsTensorInfo:
    name: str
    dtype: str  # the file's dtype name, e.g. "BF16"; may be one deeproots cannot view
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true must not pass as 1


def _is_text(value: Any) -> bool:
    """A str that is valid Unicode: json.loads lets lone surrogate escapes through, HF's reader does not."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        if not _is_text(key):
            raise ValueError(f"key {key!r} is not valid Unicode")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(raw: bytes, field: str, start: int) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; `start` is the file offset of raw[0]."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelFormatError(f"not valid UTF-8 ({error.reason})", field=field, offset=start + error.start) from None
    try:
        return json.loads(text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        where = start + len(text[:error.pos].encode("utf-8"))
        raise ModelFormatError(f"invalid JSON: {error.msg}", field=field, offset=where) from None
    except RecursionError:
        raise ModelFormatError("JSON nested too deeply", field=field, offset=start) from None
    except ValueError as error:  # from the hooks, or an integer with too many digits
        raise ModelFormatError(f"invalid JSON: {error}", field=field, offset=start) from None


class _EntryChecker:
    """Validates header entries; errors point at the entry's key in the header bytes where it is found."""

    def __init__(self, raw_header: bytes):
        self.raw_header = raw_header

    def fail(self, message: str, name: str, field: str) -> ModelFormatError:
        needle = json.dumps(name, ensure_ascii=False).encode("utf-8")
        position = self.raw_header.find(needle)
        offset = HEADER_START + max(position, 0)
        return ModelFormatError(message, field=field, offset=offset)

    def metadata(self, value: Any) -> dict[str, str]:
        if value is None:  # HF accepts an explicit null
            return {}
        if not isinstance(value, dict) or not all(_is_text(item) for item in value.values()):
            raise self.fail("__metadata__ must be an object of string -> string", METADATA_KEY, METADATA_KEY)
        return value

    def entry(self, name: str, entry: Any, data_start: int) -> SafetensorsTensorInfo:
        if not isinstance(entry, dict):
            raise self.fail("tensor entry must be an object", name, name)
        dtype = entry.get("dtype")
        if not isinstance(dtype, str):
            raise self.fail(f"dtype must be a string, got {dtype!r}", name, f"{name}.dtype")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
            raise self.fail(f"shape must be a list of non-negative integers, got {shape!r}", name, f"{name}.shape")
        if len(shape) > MAX_DIMS:
            raise self.fail(f"shape has {len(shape)} dimensions, at most {MAX_DIMS} supported", name,
                            f"{name}.shape")
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
            raise self.fail(f"data_offsets must be two non-negative integers, got {offsets!r}", name,
                            f"{name}.data_offsets")
        begin, end = offsets
        if begin > end:
            raise self.fail(f"data_offsets [{begin}, {end}) end before they begin", name, f"{name}.data_offsets")
        bits = DTYPE_BITS.get(dtype)
        if bits is not None:
            n_bits = math.prod(shape) * bits
            if n_bits % 8 or n_bits // 8 != end - begin:
                raise self.fail(f"{dtype} tensor of shape {tuple(shape)} needs {n_bits} bits, data_offsets "
                                f"give {end - begin} bytes", name, f"{name}.data_offsets")
        return SafetensorsTensorInfo(name, dtype, tuple(shape), data_start + begin, end - begin)


def _parse_header(raw_header: bytes, file_size: int) -> tuple[dict[str, str], dict[str, SafetensorsTensorInfo]]:
    header = _load_json(raw_header, "header", HEADER_START)
    if not isinstance(header, dict):
        raise ModelFormatError("header must be a JSON object", field="header", offset=HEADER_START)
    checker = _EntryChecker(raw_header)
    metadata = checker.metadata(header.pop(METADATA_KEY, None))
    data_start = HEADER_START + len(raw_header)
    infos = [checker.entry(name, entry, data_start) for name, entry in header.items()]
    # As in HF's reader: sorted by offset, each tensor starts where the previous one ended, and together
    # they fill the data section to the end of the file.
    position, previous = data_start, "the header"
    for info in sorted(infos, key=lambda info: (info.offset, info.nbytes)):
        if info.offset != position:
            kind = "leaves a gap after" if info.offset > position else "overlaps"
            raise checker.fail(f"tensor data at byte {info.offset} {kind} {previous}, which ends at byte "
                               f"{position}", info.name, f"{info.name}.data_offsets")
        position, previous = position + info.nbytes, f"tensor {info.name!r}"
    if position != file_size:
        raise ModelFormatError(f"tensors end at byte {position} but the file has {file_size} bytes",
                               field="data", offset=min(position, file_size))
    return metadata, {info.name: info for info in infos}


class SafetensorsFile:
    """An open .safetensors file: parsed header over a memory map. Use as a context manager, or close().

    The map is private copy-on-write: an in-place write to a tensor's bytes copies a page instead of crashing on a
    read-only map; the file itself is never changed.
    """

    def __init__(self, path: str, mapping: mmap.mmap | None, metadata: dict[str, str],
                 tensors: dict[str, SafetensorsTensorInfo]):
        self.path = path
        self.metadata = metadata
        self.tensors = tensors
        self._mapping = mapping

    @classmethod
    def open(cls, path: str | os.PathLike) -> SafetensorsFile:
        path = os.fspath(path)
        try:
            with open(path, "rb") as file:
                file_size = os.fstat(file.fileno()).st_size
                if file_size < HEADER_START:
                    raise ModelFormatError(f"file has {file_size} bytes, too short for the 8-byte header length",
                                           field="header_length", offset=0)
                mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
            raise ModelNotFoundError(f"no safetensors file at {path!r}: {error.strerror}") from None
        try:
            header_length = _U64.unpack_from(mapping, 0)[0]
            if header_length > MAX_HEADER_BYTES or header_length > file_size - HEADER_START:
                raise ModelFormatError(f"header length {header_length} exceeds the file ({file_size} bytes) or "
                                       f"the {MAX_HEADER_BYTES}-byte limit", field="header_length", offset=0)
            metadata, tensors = _parse_header(mapping[HEADER_START:HEADER_START + header_length], file_size)
        except BaseException:
            mapping.close()
            raise
        return cls(path, mapping, metadata, tensors)

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8, row-major, as stored) as a zero-copy view of the map; its dtype and shape are
        in `tensors[name]`. The view keeps the map alive: close() cannot unmap bytes it still points at."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"no tensor named {name!r} in {self.path}")
        if info.dtype not in DTYPE_BITS:
            raise UnsupportedModelError(f"tensor {name!r} has dtype {info.dtype!r}, which deeproots cannot load")
        if self._mapping is None:
            raise DeeprootsError(f"{self.path} is closed")
        return np.frombuffer(self._mapping, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def close(self) -> None:
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:
                pass  # tensors from tensor() are alive; the map is unmapped when the last one dies
            self._mapping = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self.tensors)} tensors)"


def _read_weight_map(folder: str) -> dict[str, str]:
    """The index's tensor name -> shard file name; shard names must be bare file names inside the folder."""
    index_path = os.path.join(folder, INDEX_FILE)
    with open(index_path, "rb") as file:
        raw = file.read(MAX_INDEX_BYTES + 1)
    if len(raw) > MAX_INDEX_BYTES:
        raise ModelFormatError(f"{INDEX_FILE} exceeds {MAX_INDEX_BYTES} bytes", field=INDEX_FILE, offset=0)
    index = _load_json(raw, INDEX_FILE, 0)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelFormatError(f"{INDEX_FILE} has no weight_map object", field="weight_map")
    for name, shard in weight_map.items():
        field = f"weight_map[{name!r}]"
        if not isinstance(shard, str):
            raise ModelFormatError(f"shard name must be a string, got {shard!r}", field=field)
        # A bare name cannot climb out of the folder; symlinks (as in HF's cache) are followed as usual.
        if shard in ("", ".", "..") or os.path.basename(shard) != shard or "\\" in shard or "\0" in shard:
            raise ModelFormatError(f"shard {shard!r} is not a file name inside the checkpoint folder", field=field)
        if not os.path.isfile(os.path.join(folder, shard)):
            raise ModelFormatError(f"shard {shard!r} named by the index does not exist in {folder!r}", field=field)
    return weight_map


def open_checkpoint(folder: str | os.PathLike) -> dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]]:
    """Every tensor of a HF checkpoint folder (model.safetensors, or shards listed by the index).

    The files stay open for the tensors' lifetime; close them via the returned SafetensorsFile objects.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ModelNotFoundError(f"no checkpoint folder at {folder!r}")
    if os.path.isfile(os.path.join(folder, INDEX_FILE)):
        weight_map = _read_weight_map(folder)
        shard_names = sorted(set(weight_map.values()))
    elif os.path.isfile(os.path.join(folder, SINGLE_FILE)):
        weight_map = None
        shard_names = [SINGLE_FILE]
    else:
        raise ModelNotFoundError(f"{folder!r} has neither {SINGLE_FILE} nor {INDEX_FILE}")
    opened: list[SafetensorsFile] = []
    result: dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]] = {}
    try:
        for shard in shard_names:
            file = SafetensorsFile.open(os.path.join(folder, shard))
            opened.append(file)
            for name, info in file.tensors.items():
                if name in result:
                    raise ModelFormatError(f"tensor {name!r} is in both {result[name][0].path!r} and {shard!r}",
                                           field=name, offset=info.offset)
                if weight_map is not None and weight_map.get(name) != shard:
                    raise ModelFormatError(f"tensor {name!r} is in {shard!r} but the index names "
                                           f"{weight_map.get(name)!r}", field=f"weight_map[{name!r}]")
                result[name] = (file, info)
        missing = sorted(set(weight_map or ()) - set(result))
        if missing:
            raise ModelFormatError(f"tensor {missing[0]!r} is not in the shard the index names "
                                   f"({len(missing)} missing)", field=f"weight_map[{missing[0]!r}]")
    except BaseException:
        for file in opened:
            file.close()
        raise
    return result
