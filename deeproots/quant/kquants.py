"""The k-quants: 256-value super-blocks split into sub-blocks with their own quantized scales.

Shared packing: a run of bytes holds several consecutive runs of values, low bits first (see
`unpack_bits`): 2-bit `qs` covers 4 runs of 32 values per 32 bytes, 4-bit `qs` 2 runs, and a 1-bit
mask `qh`/`hmask` of 32 bytes covers 8 runs of 32 values.
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
from .scale_search import GROUP_MAX_EPS, divide_or_zero, scale_and_min, sum_in_order, symmetric_scale
from .types import K_SCALE_SIZE, QK_K, GGMLType


def _unpack_runs(packed: np.ndarray, width: int, run: int) -> np.ndarray:
    """(n_blocks, k) bytes -> (n_blocks, k * 8 // width) uint8: each `run` bytes give 8 // width runs."""
    n_blocks = len(packed)
    return unpack_bits(packed.reshape(n_blocks, -1, run), width).reshape(n_blocks, -1)


def _pack_runs(values: np.ndarray, width: int, run: int) -> np.ndarray:
    """Inverse of `_unpack_runs`: (n_blocks, m) values below 2**width -> (n_blocks, m * width // 8) bytes."""
    n_blocks = len(values)
    return pack_bits(values.reshape(n_blocks, -1, 8 // width, run), width).reshape(n_blocks, -1)


def _apply_scales(scales: np.ndarray, q: np.ndarray, mins: np.ndarray | None = None) -> np.ndarray:
    """scale * q (- min) per sub-block: scales, mins (n_blocks, n_sub) float32; q (n_blocks, QK_K)."""
    n_blocks, n_sub = scales.shape
    values = scales[..., np.newaxis] * q.reshape(n_blocks, n_sub, -1).astype(np.float32)
    if mins is not None:
        values -= mins[..., np.newaxis]
    return values.reshape(n_blocks, QK_K)


def unpack_k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, each (n_blocks, 8) uint8.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; scales/mins 4-7 take
    their low 4 bits from the nibbles of bytes 8-11 and their top 2 bits from the spare top
    bits of bytes 0-3 / 4-7.
    """
    first, second, rest = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([first & 0x3F, (rest & 0x0F) | ((first >> 6) << 4)], axis=-1)
    mins = np.concatenate([second & 0x3F, (rest >> 4) | ((second >> 6) << 4)], axis=-1)
    return scales, mins


def pack_k_scales_mins(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """Inverse of `unpack_k_scales_mins`: two (n_blocks, 8) arrays of 6-bit values -> (n_blocks, 12)."""
    first = scales[:, 0:4] | ((scales[:, 4:8] >> 4) << 6)
    second = mins[:, 0:4] | ((mins[:, 4:8] >> 4) << 6)
    rest = (scales[:, 4:8] & 0x0F) | ((mins[:, 4:8] & 0x0F) << 4)
    return np.concatenate([first, second, rest], axis=-1)


def _positive_max(values: np.ndarray) -> np.ndarray:
    """Row maxima of (n_blocks, k), or +0.0 where none is positive (as ggml's loops from 0 give)."""
    largest = values.max(axis=-1)
    return np.where(largest > 0, largest, np.float32(0))


def _six_bit_levels(values: np.ndarray, largest: np.ndarray) -> np.ndarray:
    """Sub-block scales (or mins) (n_blocks, 8) -> 0..63 on the grid largest / 63."""
    inverse = inverse_or_zero(63, largest)
    # ggml wraps a negative level through uint8; the search never yields a negative scale or min
    return np.clip(np.rint(inverse[:, np.newaxis] * values), 0, 63).astype(np.uint8)


def unpack_q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """Q3_K: 12 bytes -> 16 six-bit scales (n_blocks, 16) uint8, stored with a +32 bias.

    Scale s takes its low 4 bits from nibble s // 8 of byte s % 8, and its top 2 bits from
    2-bit slot s // 4 of byte 8 + s % 4.
    """
    n_blocks = len(packed)
    low = unpack_bits(packed[:, 0:8], 4).reshape(n_blocks, 16)
    high = unpack_bits(packed[:, 8:12], 2).reshape(n_blocks, 16)
    return low | (high << 4)


@register
class Q2_K(BlockFormat):
    """16 sub-blocks of 16: value = d * scale * q - dmin * min, 4-bit scale/min, q in 0..3."""

    ggml_type = GGMLType.Q2_K
    layout = (Field("scales", QK_K // 16), Field("qs", QK_K // 4), Field("d", 2), Field("dmin", 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        packed_scales, qs, d, dmin = self.fields(blocks)
        scales = f16_to_f32(d) * (packed_scales & 0x0F).astype(np.float32)
        mins = f16_to_f32(dmin) * (packed_scales >> 4).astype(np.float32)
        return _apply_scales(scales, _unpack_runs(qs, 2, 32), mins)


@register
class Q3_K(BlockFormat):
    """16 sub-blocks of 16: value = d * (scale - 32) * (q - 4 * (1 - hbit)), q 2 low bits."""

    ggml_type = GGMLType.Q3_K
    layout = (Field("hmask", QK_K // 8), Field("qs", QK_K // 4), Field("scales", 12), Field("d", 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        hmask, qs, packed_scales, d = self.fields(blocks)
        # a clear high bit means "subtract 4": q spans -4..3
        q = _unpack_runs(qs, 2, 32).astype(np.int8) - ((_unpack_runs(hmask, 1, 32) ^ 1) << 2).astype(np.int8)
        scales = f16_to_f32(d) * (unpack_q3_k_scales(packed_scales).astype(np.int8) - np.int8(32)).astype(np.float32)
        return _apply_scales(scales, q)


@register
class Q4_K(BlockFormat):
    """8 sub-blocks of 32: value = d * scale * q - dmin * min, 6-bit scale/min, q in 0..15."""

    ggml_type = GGMLType.Q4_K
    layout = (Field("d", 2), Field("dmin", 2), Field("scales", K_SCALE_SIZE), Field("qs", QK_K // 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, dmin, packed_scales, qs = self.fields(blocks)
        scales, mins = unpack_k_scales_mins(packed_scales)
        return _apply_scales(
            f16_to_f32(d) * scales.astype(np.float32),
            _unpack_runs(qs, 4, 32),
            f16_to_f32(dmin) * mins.astype(np.float32),
        )

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        """ggml's quantize_row_q4_K_ref: search each sub-block's scale and min, store them in 6
        bits relative to the largest, then requantize every value with the stored ones."""
        n_blocks = len(values)
        x = values.reshape(n_blocks * 8, 32)
        # weight big values more, but never ignore small ones
        weights = np.sqrt(sum_in_order(x * x) / np.float32(32))[:, np.newaxis] + np.abs(x)
        scales, mins, levels = scale_and_min(x, weights, nmax=15, rmin=-1.0, rdelta=0.1, nstep=20)
        scales, mins = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8)
        max_scale, max_min = _positive_max(scales), _positive_max(mins)
        scale_levels, min_levels = _six_bit_levels(scales, max_scale), _six_bit_levels(mins, max_min)

        out = np.empty((n_blocks, self.type_size), np.uint8)
        d_out, dmin_out, scales_out, qs_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes((max_scale / np.float32(63))[:, np.newaxis])
        dmin_out[:] = f32_to_f16_bytes((max_min / np.float32(63))[:, np.newaxis])
        scales_out[:] = pack_k_scales_mins(scale_levels, min_levels)

        step = (f16_to_f32(d_out) * scale_levels.astype(np.float32))[..., np.newaxis]
        offset = (f16_to_f32(dmin_out) * min_levels.astype(np.float32))[..., np.newaxis]
        x = x.reshape(n_blocks, 8, 32)
        requantized = np.clip(np.rint(divide_or_zero(x + offset, np.broadcast_to(step, x.shape))), 0, 15)
        # a sub-block whose stored scale is 0 keeps the search's levels (they multiply 0)
        levels = np.where(step != 0, requantized, levels.reshape(n_blocks, 8, 32)).astype(np.uint8)
        qs_out[:] = _pack_runs(levels.reshape(n_blocks, QK_K), 4, 32)
        return out


@register
class Q5_K(BlockFormat):
    """8 sub-blocks of 32: value = d * scale * q - dmin * min, 6-bit scale/min, q in 0..31."""

    ggml_type = GGMLType.Q5_K
    layout = (
        Field("d", 2),
        Field("dmin", 2),
        Field("scales", K_SCALE_SIZE),
        Field("qh", QK_K // 8),
        Field("qs", QK_K // 2),
    )

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        d, dmin, packed_scales, qh, qs = self.fields(blocks)
        scales, mins = unpack_k_scales_mins(packed_scales)
        q = _unpack_runs(qs, 4, 32) | (_unpack_runs(qh, 1, 32) << 4)
        return _apply_scales(
            f16_to_f32(d) * scales.astype(np.float32),
            q,
            f16_to_f32(dmin) * mins.astype(np.float32),
        )


@register
class Q6_K(BlockFormat):
    """16 sub-blocks of 16: value = d * scale * (q - 32), int8 scale, q in 0..63.

    Each half of 128 values uses 64 bytes of `ql` (low 4 bits, 2 runs per 64 bytes) and 32 bytes
    of `qh` (high 2 bits, 4 runs of 32 values).
    """

    ggml_type = GGMLType.Q6_K
    layout = (Field("ql", QK_K // 2), Field("qh", QK_K // 4), Field("scales", QK_K // 16), Field("d", 2))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        ql, qh, scales, d = self.fields(blocks)
        q = _unpack_runs(ql, 4, 64) | (_unpack_runs(qh, 2, 32) << 4)
        scales = f16_to_f32(d) * scales.view(np.int8).astype(np.float32)
        return _apply_scales(scales, q.astype(np.int8) - np.int8(32))

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        """ggml's quantize_row_q6_K_ref: search each sub-block's scale, store them as int8 relative
        to the largest, then requantize every value with the stored ones."""
        n_blocks = len(values)
        scales, levels = symmetric_scale(values.reshape(n_blocks * 16, 16), nmax=32)
        scales = scales.reshape(n_blocks, 16)
        largest = signed_absmax(scales)[:, 0]
        all_zero = np.abs(largest) < GROUP_MAX_EPS
        inverse = np.float32(-128) / np.where(all_zero, np.float32(1), largest)

        out = np.empty((n_blocks, self.type_size), np.uint8)
        ql_out, qh_out, scales_out, d_out = self.fields(out)
        d_out[:] = f32_to_f16_bytes((np.float32(1) / inverse)[:, np.newaxis])
        scale_levels = np.clip(np.rint(inverse[:, np.newaxis] * scales), -128, 127).astype(np.int8)
        scales_out[:] = scale_levels.view(np.uint8)

        step = (f16_to_f32(d_out) * scale_levels.astype(np.float32))[..., np.newaxis]
        x = values.reshape(n_blocks, 16, 16)
        requantized = np.clip(np.rint(divide_or_zero(x, np.broadcast_to(step, x.shape))), -32, 31) + 32
        # a sub-block whose stored scale is 0 keeps the search's levels (they multiply 0)
        levels = np.where(step != 0, requantized, levels.reshape(n_blocks, 16, 16)).astype(np.uint8)
        levels = levels.reshape(n_blocks, QK_K)
        ql_out[:] = _pack_runs(levels & 0x0F, 4, 64)
        qh_out[:] = _pack_runs(levels >> 4, 2, 32)
        out[all_zero] = 0
        return out
