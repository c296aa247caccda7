"""Packs GGUF bytes field by field with struct, independently of deeproots' writer.

Every field can be given any value, valid or not, so tests can build exactly the malformed
file they need.
"""

import struct

# GGUF value type codes, from the GGUF spec.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
# GGML type codes used in these tests.
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def string(text: str | bytes, length: int | None = None) -> bytes:
    """A length-prefixed string; `length` overrides the prefix."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return u64(len(raw) if length is None else length) + raw


def kv(key: str | bytes, value_type: int, payload: bytes) -> bytes:
    return string(key) + u32(value_type) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, UINT32, u32(value))


def kv_str(key: str, value: str | bytes) -> bytes:
    return kv(key, STRING, string(value))


def array(item_type: int, count: int, items: bytes) -> bytes:
    """The payload of an ARRAY value."""
    return u32(item_type) + u64(count) + items


def tensor_info(name: str | bytes, dims: list[int], ggml_type: int, offset: int,
                n_dims: int | None = None) -> bytes:
    return (string(name) + u32(len(dims) if n_dims is None else n_dims)
            + b"".join(u64(dim) for dim in dims) + u32(ggml_type) + u64(offset))


def gguf(kvs: list[bytes] = (), infos: list[bytes] = (), data: bytes = b"", *, magic: bytes = b"GGUF",
         version: int = 3, n_tensors: int | None = None, n_kv: int | None = None, alignment: int = 32) -> bytes:
    """A whole file: header, key-values, tensor infos, zero padding to `alignment`, then `data`."""
    head = (magic + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
            + u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos))
    return head + bytes(-len(head) % alignment) + data
