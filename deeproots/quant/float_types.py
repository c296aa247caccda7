"""Plain floating-point tensors, seen as blocks of one value: F32, F16 and BF16 (all little-endian)."""

from __future__ import annotations

import numpy as np

from .base import BlockFormat, Field, register
from .types import GGMLType


@register
class F32(BlockFormat):
    ggml_type = GGMLType.F32
    layout = (Field("value", 4),)

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        return blocks.view("<f4").astype(np.float32)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        return values.astype("<f4").view(np.uint8)


@register
class F16(BlockFormat):
    ggml_type = GGMLType.F16
    layout = (Field("value", 2),)

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        return blocks.view("<f2").astype(np.float32)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        # beyond f16's range becomes infinity, as IEEE conversion (and ggml) does
        with np.errstate(over="ignore"):
            return values.astype("<f2").view(np.uint8)


@register
class BF16(BlockFormat):
    """The top 16 bits of an f32."""

    ggml_type = GGMLType.BF16
    layout = (Field("value", 2),)

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        bits = values.astype("<f4").view(np.uint32)
        is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
        # NaN keeps its sign and top payload bits and is forced quiet, as ggml does; the low 16 bits
        # are then zero, so the rounding below leaves it alone and cannot overflow
        bits = np.where(is_nan, (bits & 0xFFFF0000) | 0x00400000, bits).astype(np.uint32)
        # round to nearest, ties to even (on bit 16)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").view(np.uint8)
