"""Dequantizing GGUF blocks inside a Triton kernel: a (BLOCK_N, 32) float32 tile of a weight's rows.

A weight stays on the device as its file's bytes, (N rows x row_bytes) uint8: each row is K / block_size blocks of
type_size bytes, laid out as ggml's dequantize_row_* read them (deeproots/quant/ is the numpy form of the same
formulas, checked against the gguf package). `dequantize_tile` reads columns k0 .. k0 + 31 (k0 a multiple of 32)
of the rows `rows`, so every format looks the same to the products in linear.py: 32 columns at a time.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...backends.device_memory import DEVICE_BLOCK_TYPES
from ...quant import GGMLType
from ...quant.types import BLOCK_GEOMETRY

TILE_TYPES = DEVICE_BLOCK_TYPES  # the block formats the kernels read in place (Q5_0 is widened to Q8_0 at upload)
TILE = 32  # columns a tile spans: one legacy block, one sub-block of a K-quant super-block

Q4_0: tl.constexpr = tl.constexpr(int(GGMLType.Q4_0))
Q4_1: tl.constexpr = tl.constexpr(int(GGMLType.Q4_1))
Q8_0: tl.constexpr = tl.constexpr(int(GGMLType.Q8_0))
Q4_K: tl.constexpr = tl.constexpr(int(GGMLType.Q4_K))
Q5_K: tl.constexpr = tl.constexpr(int(GGMLType.Q5_K))
Q6_K: tl.constexpr = tl.constexpr(int(GGMLType.Q6_K))


def geometry(ggml_type: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a block format."""
    g = BLOCK_GEOMETRY[ggml_type]
    return g.block_size, g.type_size


@triton.jit
def _byte(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0).to(tl.int32)


@triton.jit
def load_f16(ptr, offsets, mask):
    """The little-endian float16 at byte offsets, as float32."""
    bits = (_byte(ptr, offsets, mask) | (_byte(ptr, offsets + 1, mask) << 8)).to(tl.uint16)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _k4_scale_min(ptr, scales, sub, mask):
    """Q4_K / Q5_K: the 6-bit scale and min of sub-block `sub` (0..7) from the 12 packed bytes at `scales`."""
    a = _byte(ptr, scales + sub, mask)
    b = _byte(ptr, scales + sub + 4, mask)
    c = _byte(ptr, scales + tl.where(sub >= 4, sub - 4, 0), mask)
    low = sub < 4
    scale = tl.where(low, a & 63, (b & 0xF) | ((c >> 6) << 4))
    minimum = tl.where(low, b & 63, (b >> 4) | ((a >> 6) << 4))
    return scale.to(tl.float32), minimum.to(tl.float32)


@triton.jit
def dequantize_tile(w_ptr, rows, row_mask, row_bytes, k0, FMT: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    TYPE_SIZE: tl.constexpr):
    """Columns k0 .. k0 + 31 of the rows `rows` (BLOCK_N,) -> (BLOCK_N, 32) float32; masked rows read as 0."""
    mask = row_mask[:, None]
    block = k0 // BLOCK_SIZE
    base = rows.to(tl.int64)[:, None] * row_bytes + block * TYPE_SIZE  # (BLOCK_N, 1) the block's first byte
    k = (k0 % BLOCK_SIZE) + tl.arange(0, 32)[None, :]  # (1, 32) columns within the block
    if FMT == Q4_0:  # f16 d, 16 bytes: low nibbles are values 0..15, high nibbles 16..31
        d = load_f16(w_ptr, base, mask)
        q = (_byte(w_ptr, base + 2 + k % 16, mask) >> (4 * (k // 16))) & 0xF
        tile = (q - 8).to(tl.float32) * d
    elif FMT == Q4_1:  # f16 d, f16 m, 16 bytes of nibbles: d * q + m
        d = load_f16(w_ptr, base, mask)
        m = load_f16(w_ptr, base + 2, mask)
        q = (_byte(w_ptr, base + 4 + k % 16, mask) >> (4 * (k // 16))) & 0xF
        tile = q.to(tl.float32) * d + m
    elif FMT == Q8_0:  # f16 d, 32 int8
        d = load_f16(w_ptr, base, mask)
        q = tl.load(w_ptr + base + 2 + k, mask=mask, other=0).to(tl.int8, bitcast=True)
        tile = q.to(tl.float32) * d
    elif FMT == Q4_K:  # f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes: 64 values per 32 bytes
        d = load_f16(w_ptr, base, mask)
        dmin = load_f16(w_ptr, base + 2, mask)
        scale, minimum = _k4_scale_min(w_ptr, base + 4, k // 32, mask)
        q = (_byte(w_ptr, base + 16 + 32 * (k // 64) + k % 32, mask) >> (4 * ((k % 64) // 32))) & 0xF
        tile = d * scale * q.to(tl.float32) - dmin * minimum
    elif FMT == Q5_K:  # as Q4_K, with a fifth bit per value in 32 bytes qh (bit k // 32 of qh[k % 32])
        d = load_f16(w_ptr, base, mask)
        dmin = load_f16(w_ptr, base + 2, mask)
        scale, minimum = _k4_scale_min(w_ptr, base + 4, k // 32, mask)
        low = (_byte(w_ptr, base + 48 + 32 * (k // 64) + k % 32, mask) >> (4 * ((k % 64) // 32))) & 0xF
        high = (_byte(w_ptr, base + 16 + k % 32, mask) >> (k // 32)) & 1
        tile = d * scale * (low + 16 * high).to(tl.float32) - dmin * minimum
    else:  # Q6_K: 128 bytes ql, 64 bytes qh, 16 int8 scales, f16 d; two halves of 128 values, four quarters each
        tl.static_assert(FMT == Q6_K)
        half = k // 128
        quarter = (k % 128) // 32
        lane = k % 32
        ql = (_byte(w_ptr, base + 64 * half + lane + 32 * (quarter % 2), mask) >> (4 * (quarter // 2))) & 0xF
        qh = (_byte(w_ptr, base + 128 + 32 * half + lane, mask) >> (2 * quarter)) & 3
        scale = tl.load(w_ptr + base + 192 + 8 * half + lane // 16 + 2 * quarter, mask=mask, other=0)
        d = load_f16(w_ptr, base + 208, mask)
        tile = d * scale.to(tl.int8, bitcast=True).to(tl.float32) * ((ql | (qh << 4)) - 32).to(tl.float32)
    return tile
