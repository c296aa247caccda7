"""The block-format registry and the bit-unpacking helpers the formats share.

A block format is a class that spells out its block layout (named byte fields, in storage order)
and turns `(n_blocks, type_size)` raw bytes into `(n_blocks, block_size)` float32 values, and
optionally back. `register` checks the layout against `BLOCK_GEOMETRY` and stores one instance
per GGML type; `block_format` looks it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from ..errors import UnsupportedModelError
from .types import BLOCK_GEOMETRY, GGMLType


@dataclass(frozen=True)
class Field:
    """One named run of bytes inside a block, e.g. Field("d", 2) for an f16 scale."""

    name: str
    nbytes: int


class BlockFormat:
    """One GGML block format; subclasses set `ggml_type` and `layout` and implement the codecs."""

    ggml_type: ClassVar[GGMLType]
    layout: ClassVar[tuple[Field, ...]]

    @property
    def block_size(self) -> int:
        return BLOCK_GEOMETRY[self.ggml_type].block_size

    @property
    def type_size(self) -> int:
        return BLOCK_GEOMETRY[self.ggml_type].type_size

    @property
    def name(self) -> str:
        return self.ggml_type.name

    @property
    def can_quantize(self) -> bool:
        return type(self).quantize_blocks is not BlockFormat.quantize_blocks

    def fields(self, blocks: np.ndarray) -> tuple[np.ndarray, ...]:
        """Column views of `blocks` (n_blocks, type_size), one per layout field, in layout order."""
        views = []
        start = 0
        for field in self.layout:
            views.append(blocks[:, start : start + field.nbytes])
            start += field.nbytes
        return tuple(views)

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """(n_blocks, type_size) uint8 -> (n_blocks, block_size) float32."""
        raise NotImplementedError

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        """(n_blocks, block_size) float32 -> (n_blocks, type_size) uint8."""
        raise _no_quantizer(self)


_REGISTRY: dict[GGMLType, BlockFormat] = {}
FormatClass = TypeVar("FormatClass", bound=type[BlockFormat])


def register(cls: FormatClass) -> FormatClass:
    """Class decorator: check the layout adds up to the type's block size and register one instance."""
    layout_bytes = sum(field.nbytes for field in cls.layout)
    expected = BLOCK_GEOMETRY[cls.ggml_type].type_size
    if layout_bytes != expected:
        raise TypeError(f"{cls.__name__} layout has {layout_bytes} bytes, {cls.ggml_type.name} blocks have {expected}")
    if cls.ggml_type in _REGISTRY:
        raise TypeError(f"{cls.ggml_type.name} is registered twice")
    _REGISTRY[cls.ggml_type] = cls()
    return cls


def _names(types) -> str:
    return ", ".join(t.name for t in sorted(types))


def supported_types() -> frozenset[GGMLType]:
    """The GGML types we can dequantize."""
    return frozenset(_REGISTRY)


def quantizable_types() -> frozenset[GGMLType]:
    """The GGML types we can quantize to."""
    return frozenset(t for t, fmt in _REGISTRY.items() if fmt.can_quantize)


def _no_quantizer(fmt: BlockFormat) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"quantizing to {fmt.name} is not implemented; quantizable types: {_names(quantizable_types())}"
    )


def quantizer(ggml_type: int) -> BlockFormat:
    """The registered format for `ggml_type` if it can quantize; UnsupportedModelError otherwise."""
    fmt = block_format(ggml_type)
    if not fmt.can_quantize:
        raise _no_quantizer(fmt)
    return fmt


def block_format(ggml_type: int) -> BlockFormat:
    """The registered format for `ggml_type`; UnsupportedModelError naming it if there is none."""
    try:
        ggml_type = GGMLType(ggml_type)
    except ValueError:
        raise UnsupportedModelError(
            f"unknown GGML tensor type {ggml_type!r}; supported types: {_names(_REGISTRY)}"
        ) from None
    found = _REGISTRY.get(ggml_type)
    if found is None:
        raise UnsupportedModelError(
            f"GGML tensor type {ggml_type.name} ({int(ggml_type)}) is not supported; "
            f"supported types: {_names(_REGISTRY)}"
        )
    return found


def f16_to_f32(field: np.ndarray) -> np.ndarray:
    """A 2-byte little-endian f16 field (n_blocks, 2) -> float32 (n_blocks, 1)."""
    return field.view("<f2").astype(np.float32)


def f32_to_f16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 (n_blocks, 1) -> its f16 bytes (n_blocks, 2), rounded to nearest even."""
    return values.astype("<f2").view(np.uint8)


def inverse_or_zero(numerator: float, d: np.ndarray) -> np.ndarray:
    """numerator / d in float32; 0 where d is 0 (an all-zero block) or so tiny the quotient overflows.

    The tiny case (|d| below ~1e-37) is undefined behaviour in ggml's C; the f16 scale it stores
    is 0 anyway, so we quantize such a block like an all-zero one.
    """
    with np.errstate(over="ignore"):
        inverse = np.divide(np.float32(numerator), d, out=np.zeros_like(d), where=d != 0)
    return np.where(np.isfinite(inverse), inverse, np.float32(0))


def signed_absmax(values: np.ndarray) -> np.ndarray:
    """(..., n) -> (..., 1): the value of largest magnitude, with its sign (the first one on ties)."""
    return np.take_along_axis(values, np.abs(values).argmax(axis=-1, keepdims=True), axis=-1)


def unpack_bits(packed: np.ndarray, width: int) -> np.ndarray:
    """Split each byte into 8 // width fields of `width` bits, low bits first.

    (..., k) uint8 -> (..., 8 // width, k): slot i holds bits [i*width, (i+1)*width) of every byte,
    which is how ggml stores consecutive runs of k values in the same bytes.
    """
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    mask = np.uint8((1 << width) - 1)
    return (packed[..., np.newaxis, :] >> shifts) & mask


def pack_bits(fields: np.ndarray, width: int) -> np.ndarray:
    """Inverse of `unpack_bits`: (..., 8 // width, k) values below 2**width -> (..., k) uint8."""
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    return np.bitwise_or.reduce(fields.astype(np.uint8) << shifts, axis=-2)
