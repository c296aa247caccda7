"""The KV cache: keys and values of every layer for one sequence, preallocated to the context.

The interface is small: `offset` (tokens stored), `update` (write this step's keys/values for a
layer, get back everything stored so far), `advance` (after the last layer) and `truncate`;
`extend` appends rows copied from another cache (a cached prompt prefix).

Keys and values are numpy arrays of float32, float16, or q8_0 (llama.cpp's `-ctk q8_0 -ctv q8_0`): per 32
values along head_dim one GGML Q8_0 block of 34 bytes (an f16 scale and 32 int8), kept as uint8 rows
that the attention kernel reads directly. q8_0 is 8.5 bits a value against f16's 16.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import RequestError
from ..kernels.attention import quantize_q8_0_rows
from ..quant import GGMLType, dequantize
from ..quant.types import BLOCK_GEOMETRY

QK, Q8_0_BYTES = BLOCK_GEOMETRY[GGMLType.Q8_0].block_size, BLOCK_GEOMETRY[GGMLType.Q8_0].type_size  # 32 values, 34 B
KV_TYPES = {"f32": np.float32, "f16": np.float16, "q8_0": np.uint8}  # name -> the numpy dtype rows are stored in


def check_kv_type(kv_type: str) -> None:
    if kv_type not in KV_TYPES:
        raise RequestError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")


def kv_type_fits(kv_type: str, head_dim: int) -> bool:
    """Whether a cache of `kv_type` can hold rows of head_dim values: q8_0 stores whole blocks of 32."""
    return kv_type != "q8_0" or head_dim % QK == 0


def dequantize_rows(rows: np.ndarray) -> np.ndarray:
    """Rows of a q8_0 cache (..., head_dim / 32 * 34) uint8 -> (..., head_dim) float32 (deeproots.quant's Q8_0)."""
    head_dim = rows.shape[-1] // Q8_0_BYTES * QK
    values = dequantize(np.ascontiguousarray(rows).reshape(-1), GGMLType.Q8_0, (head_dim, rows[..., 0].size))
    return values.reshape(*rows.shape[:-1], head_dim)


class KVLayout(NamedTuple):
    """The shape a model's cache has at every position: what a backend needs to allocate one."""
    n_layers: int
    n_kv_heads: int
    head_dim: int


def kv_row_size(head_dim: int, kv_type: str) -> int:
    """Elements of one stored key or value: head_dim values, or for q8_0 head_dim / 32 blocks of 34 bytes."""
    return head_dim // QK * Q8_0_BYTES if kv_type == "q8_0" else head_dim


def kv_cache_nbytes(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, kv_type: str) -> int:
    """Bytes of a cache holding `tokens` positions: the keys and values of every layer and KV head."""
    return 2 * n_layers * n_kv_heads * tokens * kv_row_size(head_dim, kv_type) * np.dtype(KV_TYPES[kv_type]).itemsize


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int, kv_type: str = "f32"):
        check_kv_type(kv_type)
        if not kv_type_fits(kv_type, head_dim):
            raise RequestError(f"a q8_0 KV cache needs a head size that is a multiple of {QK}; this model's is "
                               f"{head_dim}: use f16")
        self.kv_type = kv_type
        self.max_tokens = max_tokens
        # (n_layers, n_kv_heads, max_tokens, row): heads first so a layer's prefix is what attention takes.
        shape = (n_layers, n_kv_heads, max_tokens, kv_row_size(head_dim, kv_type))
        self.keys, self.values = self._zeros(shape, kv_type), self._zeros(shape, kv_type)
        self.offset = 0

    def _zeros(self, shape: tuple[int, ...], kv_type: str) -> np.ndarray:
        """Storage for keys or values, in host memory (cache/device_kv.py places it on a device)."""
        return np.zeros(shape, KV_TYPES[kv_type])

    def room(self) -> int:
        return self.max_tokens - self.offset

    def update(self, layer: int, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store `keys`/`values` (n_kv_heads, T, head_dim) float32 arrays (strided views are fine) at the current
        offset.

        Returns views of all keys and values of this layer so far, (n_kv_heads, offset + T, row) each, where row is
        head_dim, or head_dim / 32 * 34 bytes of Q8_0 blocks in a q8_0 cache.
        """
        end = self.offset + keys.shape[1]
        if end > self.max_tokens:
            raise RequestError(f"the KV cache holds {self.max_tokens} tokens; this step needs {end}")
        self._write(self.keys[layer, :, self.offset:end], keys)
        self._write(self.values[layer, :, self.offset:end], values)
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def _write(self, rows: np.ndarray, new: np.ndarray) -> None:
        """Store new (n_kv_heads, T, head_dim) float32 into the cache's rows (n_kv_heads, T, row), quantized in q8_0."""
        if self.kv_type == "q8_0":
            quantize_q8_0_rows(new, rows)
        else:
            rows[...] = new

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of positions start..stop of every layer, (n_layers, n_kv_heads, stop - start, row) each: what
        `extend` takes."""
        return self.keys[:, :, start:stop].copy(), self.values[:, :, start:stop].copy()

    def extend(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Append rows as this cache stores them, (n_layers, n_kv_heads, n, row) each (e.g. a slice of another
        cache's `keys`/`values` of the same kv_type), to every layer, and advance past them."""
        end = self.offset + keys.shape[2]
        expected = (*self.keys.shape[:2], keys.shape[2], self.keys.shape[3])
        if keys.dtype != self.keys.dtype or values.dtype != self.keys.dtype or keys.shape != expected or \
                values.shape != expected:
            raise RequestError(f"extend needs keys and values of shape {expected} and dtype {self.keys.dtype}, got "
                               f"{keys.shape} {keys.dtype} and {values.shape} {values.dtype}")
        if end > self.max_tokens:
            raise RequestError(f"the KV cache holds {self.max_tokens} tokens; this step needs {end}")
        self.keys[:, :, self.offset:end] = keys
        self.values[:, :, self.offset:end] = values
        self.offset = end

    def advance(self, n_tokens: int) -> None:
        self.offset += n_tokens

    def truncate(self, n_tokens: int) -> None:
        """Forget everything after the first `n_tokens` (reuse a shared prefix, or start over with 0)."""
        if not 0 <= n_tokens <= self.offset:
            raise RequestError(f"cannot truncate a cache of {self.offset} tokens to {n_tokens}")
        self.offset = n_tokens

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
