"""The original 32-value block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Packing shared by the 4- and 5-bit formats: byte j of `qs` holds value j in its low nibble and
value j + 16 in its high nibble; for the 5-bit formats bit i of the little-endian `qh` is the
fifth bit of value i. The quantizers follow ggml's `quantize_row_*_ref` operation for operation,
in float32, so their bytes match ggml's and gguf-py's exactly (see `inverse_or_zero` for the one
case where ggml's behaviour is undefined).
"""

from __future__ import annotations

import numpy as np

from .base import (
    BlockFormat,
    Field,
    f16_to_f32,
    f32_to_f16_bytes,
    inverse_or_zero,
    pack_bits,
    register,
    signed_absmax,
    unpack_bits,
)
from .types import GGMLType

QK = 32  # values per block


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """(n_blocks, 16) bytes -> (n_blocks, 32) uint8: the low nibbles, then the high nibbles."""
    return unpack_bits(qs, 4).reshape(len(qs), QK)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) values below 16 -> (n_blocks, 16) bytes; inverse of `_unpack_nibbles`."""
    return pack_bits(q.reshape(len(q), 2, QK // 2), 4)


def _unpack_fifth_bits(qh: np.ndarray) -> np.ndarray:
    """(n_blocks, 4) bytes of a little-endian uint32 -> (n_blocks, 32) uint8: bit i of value i."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _pack_fifth_bits(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) values below 32 -> (n_blocks, 4) bytes holding each value's bit 4."""
    return np.packbits(q >> 4, axis=-1, bitorder="little")


def _truncate_to_uint(x: np.ndarray, top: int) -> np.ndarray:
    """C's `MIN(top, (int8_t)x)` for x >= 0: truncate toward zero, clamp to `top`."""
    return np.minimum(np.trunc(x), np.float32(top)).astype(np.uint8)


def round_half_away_from_zero(x: np.ndarray) -> np.ndarray:
    """C's roundf, exactly: x + 0.5 can round up in float32, so compare the fraction instead."""
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    return np.copysign(whole + (magnitude - whole >= 0.5), x)


@register
class Q4_0(BlockFormat):
    """value = d * (q - 8), q in 0..15."""

    ggml_type = GGMLType.Q4_0
    layout = (Field("d", 2), Field("qs", QK // 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, qs = self.fields(blocks)
        q = _unpack_nibbles(qs).astype(np.int8) - np.int8(8)
        return f16_to_f32(d) * q.astype(np.float32)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        # the largest magnitude maps to q = 0 exactly, so the sign of d is that value's sign flipped
        d = signed_absmax(values) / np.float32(-8)
        q = _truncate_to_uint(values * inverse_or_zero(1, d) + np.float32(8.5), 15)
        out = np.empty((len(values), self.type_size), np.uint8)
        d_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes(d)
        qs_out[:] = _pack_nibbles(q)
        return out


@register
class Q4_1(BlockFormat):
    """value = d * q + m, q in 0..15."""

    ggml_type = GGMLType.Q4_1
    layout = (Field("d", 2), Field("m", 2), Field("qs", QK // 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, m, qs = self.fields(blocks)
        return f16_to_f32(d) * _unpack_nibbles(qs).astype(np.float32) + f16_to_f32(m)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        low = values.min(axis=-1, keepdims=True)
        d = (values.max(axis=-1, keepdims=True) - low) / np.float32(15)
        q = _truncate_to_uint((values - low) * inverse_or_zero(1, d) + np.float32(0.5), 15)
        out = np.empty((len(values), self.type_size), np.uint8)
        d_out, m_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes(d)
        m_out[:] = f32_to_f16_bytes(low)
        qs_out[:] = _pack_nibbles(q)
        return out


@register
class Q5_0(BlockFormat):
    """value = d * (q - 16), q in 0..31."""

    ggml_type = GGMLType.Q5_0
    layout = (Field("d", 2), Field("qh", QK // 8), Field("qs", QK // 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, qh, qs = self.fields(blocks)
        q = (_unpack_nibbles(qs) | (_unpack_fifth_bits(qh) << 4)).astype(np.int8) - np.int8(16)
        return f16_to_f32(d) * q.astype(np.float32)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        d = signed_absmax(values) / np.float32(-16)
        q = _truncate_to_uint(values * inverse_or_zero(1, d) + np.float32(16.5), 31)
        out = np.empty((len(values), self.type_size), np.uint8)
        d_out, qh_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes(d)
        qh_out[:] = _pack_fifth_bits(q)
        qs_out[:] = _pack_nibbles(q & 0x0F)
        return out


@register
class Q5_1(BlockFormat):
    """value = d * q + m, q in 0..31."""

    ggml_type = GGMLType.Q5_1
    layout = (Field("d", 2), Field("m", 2), Field("qh", QK // 8), Field("qs", QK // 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, m, qh, qs = self.fields(blocks)
        q = _unpack_nibbles(qs) | (_unpack_fifth_bits(qh) << 4)
        return f16_to_f32(d) * q.astype(np.float32) + f16_to_f32(m)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        low = values.min(axis=-1, keepdims=True)
        d = (values.max(axis=-1, keepdims=True) - low) / np.float32(31)
        q = _truncate_to_uint((values - low) * inverse_or_zero(1, d) + np.float32(0.5), 31)
        out = np.empty((len(values), self.type_size), np.uint8)
        d_out, m_out, qh_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes(d)
        m_out[:] = f32_to_f16_bytes(low)
        qh_out[:] = _pack_fifth_bits(q)
        qs_out[:] = _pack_nibbles(q & 0x0F)
        return out


@register
class Q8_0(BlockFormat):
    """value = d * q, q an int8 in -127..127."""

    ggml_type = GGMLType.Q8_0
    layout = (Field("d", 2), Field("qs", QK))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, qs = self.fields(blocks)
        return qs.view(np.int8).astype(np.float32) * f16_to_f32(d)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        d = np.abs(values).max(axis=-1, keepdims=True) / np.float32(127)
        q = round_half_away_from_zero(values * inverse_or_zero(1, d))
        out = np.empty((len(values), self.type_size), np.uint8)
        d_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes(d)
        qs_out[:] = q.astype(np.int8).view(np.uint8)
        return out


def q5_0_as_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q5_0 bytes -> Q8_0 bytes of exactly the same values: same scale d, and q - 16 fits an int8.

    Lets the CUDA backend's Q8_0 kernel run Q5_0 weights (Gemma 3 files use them) at 34/22 of the bytes, losing
    nothing; the CPU tests check its Q5_0 kernel against the Q8_0 kernel over these blocks.
    """
    source, target = Q5_0(), Q8_0()
    blocks = np.ascontiguousarray(raw).reshape(-1, source.type_size)
    d, qh, qs = source.fields(blocks)
    out = np.empty((len(blocks), target.type_size), np.uint8)
    d_out, qs_out = target.fields(out)
    d_out[:] = d
    qs_out[:] = ((_unpack_nibbles(qs) | (_unpack_fifth_bits(qh) << 4)).astype(np.int8) - np.int8(16)).view(np.uint8)
    return out.reshape(-1)
