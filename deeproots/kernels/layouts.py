"""Repack GGUF weight bytes once, at load, into the interleaved layouts the compiled kernels read.

The layouts are specified in csrc/qgemm.h. In short: output rows go in groups of 16; within a group, each 32-value
block stores 4 consecutive values of each of the 16 rows side by side, so one 64-byte vector feeds one int8 dot
product step for 16 rows at once. Per-row scales of a block sit together (16 x f16) before its values. The bytes
keep the file's precision: a repacked tensor is the size of the file's, plus padding of the last group of rows.
"""

import numpy as np

from ..quant.types import BLOCK_GEOMETRY, GGMLType, QK_K

ROWS = 16  # output rows per group; must match ROWS in csrc/qgemm.h
CHUNK_ROWS = 64 * ROWS  # rows repacked at a time: bounds the temporary memory of a large tensor
SUBBLOCKS = QK_K // 32  # 32-value sub-blocks per k-quant super-block


def _interleave(fields: np.ndarray, unit: int) -> np.ndarray:
    """(n, nb, V * unit) per-row bytes -> (n // 16, nb, V * 16 * unit): vector v holds `unit` bytes of each row."""
    n, nb, width = fields.shape
    v = width // unit
    grouped = fields.reshape(n // ROWS, ROWS, nb, v, unit).transpose(0, 2, 3, 1, 4)  # (G, nb, V, 16, unit)
    return grouped.reshape(n // ROWS, nb, v * ROWS * unit)


def _nibble_tile(values: np.ndarray) -> np.ndarray:
    """4-bit values (n, nb, 32) -> (G, nb, 256): byte i of a row holds values i and i + 16 (low, high nibble)."""
    packed = values[..., :16] | (values[..., 16:] << 4)  # (n, nb, 16)
    return _interleave(packed, 4)


def _bit_planes(bits: np.ndarray, width: int) -> np.ndarray:
    """High bits (n, nb, 32) of `width` bits -> (G, nb, width * 64): field j of byte e in vector v holds the high
    bits of value 4 * (per * v + j) + e, where per = 8 // width fields fit in a byte."""
    n, nb, _ = bits.shape
    per = 8 // width
    fields = bits.reshape(n, nb, width, per, 4).astype(np.uint8)  # (n, nb, vector, field j, e)
    shifts = (np.arange(per, dtype=np.uint8) * width).reshape(1, 1, 1, per, 1)
    packed = np.bitwise_or.reduce(fields << shifts, axis=3)  # (n, nb, width, 4)
    return _interleave(packed.reshape(n, nb, width * 4), 4)


def _f16_rows(fields: np.ndarray) -> np.ndarray:
    """f16 bytes (n, nb, 2) -> (G, nb, 32): the 16 rows' values side by side."""
    return _interleave(fields, 2)


def _k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K packed 6-bit scales (n, ns, 12) -> sub-block scales and mins, each (n, ns, 8)."""
    d, m, md = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _k_low_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K / Q5_K quants (n, ns, 128) -> 4-bit values (n, ns * 8, 32): 64 values per 32 bytes, low nibbles first."""
    n, ns, _ = qs.shape
    chunks = qs.reshape(n, ns, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
    return (chunks & 0x0F).reshape(n, ns * SUBBLOCKS, 32)


def _super(header: list[np.ndarray], sub_blocks: list[np.ndarray], ns: int) -> np.ndarray:
    """Concatenate a super-block header (G, ns, *) with its 8 sub-block records (G, ns * 8, *)."""
    g = sub_blocks[0].shape[0]
    subs = np.concatenate(sub_blocks, axis=-1).reshape(g, ns, -1)
    return np.concatenate([*header, subs], axis=-1)


# The 32-value formats: each block's fields in record order, as (first byte, end byte, item type). A packed record
# holds field by field the 16 rows' items side by side (scales as f16, values in 4-byte units), so every field is
# one strided copy straight into the output.
_BLOCK_FIELDS = {
    GGMLType.Q4_0: ((0, 2, np.uint16), (2, 18, np.uint32)),
    GGMLType.Q4_1: ((0, 2, np.uint16), (2, 4, np.uint16), (4, 20, np.uint32)),
    GGMLType.Q8_0: ((0, 2, np.uint16), (2, 34, np.uint32)),  # values stored + 128 (uint8), see _pack_blocks
}


def _pack_blocks(blocks: np.ndarray, ggml_type: GGMLType, out: np.ndarray) -> None:
    """File blocks (n, nblocks, type_size) of a 32-value format, n % 16 == 0 -> `out` (G, bytes per group).

    Written field by field with no temporaries but an aligned copy of the values where the file leaves them
    unaligned: numpy's unaligned strided loops are several times slower than a copy and an aligned pass.
    """
    n, nb, _ = blocks.shape
    records = out.reshape(n // ROWS, nb, -1)  # (G, nb, 16 * type_size)
    at = 0
    for start, end, item in _BLOCK_FIELDS[ggml_type]:
        items = blocks[..., start:end].view(item)  # (n, nb, V)
        if ggml_type == GGMLType.Q8_0 and start == 2:
            items = np.array(items, order="C")
            items ^= np.uint32(0x80808080)  # int8 -> uint8, four at a time
        elif not items.flags.aligned:
            items = np.array(items, order="C")
        v = items.shape[-1]
        target = records[..., at:at + (end - start) * ROWS].view(item)
        target.shape = (n // ROWS, nb, v, ROWS)  # a view: raises rather than copy
        np.copyto(target, items.reshape(n // ROWS, ROWS, nb, v).transpose(0, 2, 3, 1))
        at += (end - start) * ROWS


def _pack_rows(blocks: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """One chunk of k-quant file blocks (n, nblocks, type_size), n % 16 == 0 -> packed groups (G, bytes per group)."""
    n, ns = blocks.shape[:2]
    if ggml_type in (GGMLType.Q4_K, GGMLType.Q5_K):
        sc, mn = _k_scales(blocks[..., 4:16])
        header = [_f16_rows(blocks[..., 0:2]), _f16_rows(blocks[..., 2:4]), _interleave(sc, 1), _interleave(mn, 1)]
        subs = [_nibble_tile(_k_low_nibbles(blocks[..., -128:]))]
        if ggml_type == GGMLType.Q5_K:
            qh = blocks[..., 16:48].reshape(n, ns, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
            subs.append(_bit_planes((qh & 1).reshape(n, ns * SUBBLOCKS, 32), 1))
        records = [_super(header, subs, ns)]
    elif ggml_type == GGMLType.Q6_K:
        ql = blocks[..., 0:128].reshape(n, ns, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 1, 2, 1)
        qh = blocks[..., 128:192].reshape(n, ns, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
        low = (ql & 0x0F).reshape(n, ns * SUBBLOCKS, 32)
        high = (qh & 0x03).reshape(n, ns * SUBBLOCKS, 32)
        header = [_f16_rows(blocks[..., 208:210]), _interleave(blocks[..., 192:208], 1)]
        records = [_super(header, [_nibble_tile(low), _bit_planes(high, 2)], ns)]
    else:
        raise ValueError(f"no packed layout for {ggml_type.name}")
    return np.concatenate(records, axis=-1).reshape(n // ROWS, -1)


def aligned_empty(nbytes: int, alignment: int = 64) -> np.ndarray:
    """An uninitialised uint8 buffer whose first byte is `alignment`-aligned."""
    base = np.empty(nbytes + alignment, dtype=np.uint8)
    start = -base.ctypes.data % alignment
    return base[start : start + nbytes]


def pack_quantized(rows: np.ndarray, ggml_type: GGMLType, n: int, k: int, group_bytes: int) -> np.ndarray:
    """File bytes (n, row_bytes) of a block-quantized type -> packed groups, 64-byte aligned, ceil(n/16) groups."""
    geometry = BLOCK_GEOMETRY[ggml_type]
    groups = -(-n // ROWS)
    out = aligned_empty(groups * group_bytes).reshape(groups, group_bytes)
    for start in range(0, n, CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        if chunk.shape[0] % ROWS:
            chunk = np.concatenate([chunk, np.zeros((ROWS - chunk.shape[0] % ROWS, chunk.shape[1]), np.uint8)])
        blocks = chunk.reshape(chunk.shape[0], k // geometry.block_size, geometry.type_size)
        g0 = start // ROWS
        if ggml_type in _BLOCK_FIELDS:
            _pack_blocks(blocks, ggml_type, out[g0 : g0 + chunk.shape[0] // ROWS])
        else:
            out[g0 : g0 + chunk.shape[0] // ROWS] = _pack_rows(blocks, ggml_type)
    return out.reshape(-1)


def pack_float(rows: np.ndarray) -> np.ndarray:
    """F32 / F16 / BF16 file bytes (n, row_bytes): kept row-major, copied into an aligned buffer."""
    out = aligned_empty(rows.nbytes)
    out[:] = rows.reshape(-1)
    return out
