"""Whole tensors to and from raw block bytes: validation, then the block format, chunk by chunk."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from .base import block_format, quantizer

# values per chunk: keeps each chunk's temporaries in cache and the peak memory near the output's
CHUNK_VALUES = 1 << 17


def _checked_shape(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(shape)
    if not dims or not all(isinstance(dim, (int, np.integer)) and dim >= 0 for dim in dims):
        raise ModelFormatError(f"tensor shape must be one or more non-negative ints, got {shape!r}", field="shape")
    return tuple(int(dim) for dim in dims)


def _blockwise(convert, source: np.ndarray, out: np.ndarray, block_size: int) -> None:
    """out[i] = convert(source[i]) over rows of blocks, one bounded chunk at a time."""
    step = max(1, CHUNK_VALUES // block_size)
    for start in range(0, len(source), step):
        out[start : start + step] = convert(source[start : start + step])


def dequantize(raw: np.ndarray, ggml_type: int, shape: Sequence[int]) -> np.ndarray:
    """Raw block bytes -> float32 values.

    raw: the tensor's bytes as a contiguous uint8 array of any shape (a memmap slice is fine).
    shape: GGUF order, shape[0] is the row length. Returns numpy shape `tuple(reversed(shape))`.
    """
    fmt = block_format(ggml_type)
    dims = _checked_shape(shape)
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8:
        raise ModelFormatError(
            f"{fmt.name} tensor data must be a uint8 numpy array, got {type(raw).__name__} "
            f"{getattr(raw, 'dtype', '')}; pass array.view(np.uint8)",
            field="raw",
        )
    if dims[0] % fmt.block_size:
        raise ModelFormatError(
            f"{fmt.name} row length {dims[0]} is not a multiple of its block size {fmt.block_size}",
            field="shape",
        )
    n_blocks = math.prod(dims) // fmt.block_size
    expected = n_blocks * fmt.type_size
    if raw.size != expected:
        raise ModelFormatError(
            f"{fmt.name} tensor of shape {list(dims)} needs {expected} bytes, got {raw.size}", field="raw"
        )
    blocks = raw.reshape(n_blocks, fmt.type_size)
    out = np.empty((n_blocks, fmt.block_size), np.float32)
    # an infinite or NaN scale in the file is data, not our error: let it give NaN quietly
    with np.errstate(invalid="ignore"):
        _blockwise(fmt.dequantize_blocks, blocks, out, fmt.block_size)
    return out.reshape(tuple(reversed(dims)))


def quantize(values: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 values (..., row_length) -> uint8 block bytes (..., row_length // block_size * type_size).

    Other real dtypes are converted to float32 first. Block formats reject NaN and infinity.
    """
    fmt = quantizer(ggml_type)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 0:
        raise UnsupportedModelError(f"cannot quantize a 0-d value to {fmt.name}; pass at least one row")
    row_length = values.shape[-1]
    if row_length % fmt.block_size:
        raise UnsupportedModelError(
            f"row length {row_length} is not a multiple of {fmt.name}'s block size {fmt.block_size}; "
            "store this tensor in a type with a smaller block (e.g. F16)"
        )
    if fmt.block_size > 1 and not np.isfinite(values).all():
        raise ModelFormatError(f"values contain NaN or infinity, which {fmt.name} cannot store", field="values")
    blocks = values.reshape(-1, fmt.block_size)
    out = np.empty((len(blocks), fmt.type_size), np.uint8)
    _blockwise(fmt.quantize_blocks, blocks, out, fmt.block_size)
    return out.reshape(*values.shape[:-1], row_length // fmt.block_size * fmt.type_size)

