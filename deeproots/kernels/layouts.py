"""Repack GGUF weight bytes once, at load, into the interleaved layouts the compiled kernels read.

The layouts are specified in csrc/qgemm.h. In short: output rows go in groups of 16; within a group, each 32-value
block stores 4 consecutive values of each of the 16 rows side by side, so one 64-byte vector feeds one int8 dot
product step for 16 rows at once. Per-row scales of a block sit together (16 x f16) before its values. The bytes
keep the file's precision: a repacked tensor is the size of the file's, plus padding of the last group of rows.
"""

import numpy as np

from ..errors import InternalError
from ..quant.types import BLOCK_GEOMETRY, GGMLType, QK_K
from . import _cpu

ROWS = _cpu.ROWS  # output rows per group (16), as the extension was built with
CHUNK_ROWS = 64 * ROWS  # rows repacked at a time: bounds the temporary memory of a large tensor
SUBBLOCKS = QK_K // 32  # 32-value sub-blocks per k-quant super-block


def _check_block_geometry() -> None:
    """The file blocks the C core reads (its own #defines) must be deeproots.quant's: checked once, at import."""
    for type_id, (values, nbytes) in _cpu.FILE_BLOCK_BYTES.items():
        name, geometry = GGMLType(type_id).name, BLOCK_GEOMETRY[GGMLType(type_id)]
        if (values, nbytes) != (geometry.block_size, geometry.type_size):
            raise InternalError(f"the C core reads {name} blocks of {values} values in {nbytes} bytes, "
                                f"deeproots.quant says {geometry.block_size} in {geometry.type_size}")


_check_block_geometry()


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


def _pack_rows(blocks: np.ndarray, ggml_type: GGMLType) -> np.ndarray:
    """One chunk of Q5_0 or k-quant file blocks (n, nblocks, type_size), n % 16 == 0 -> packed groups (G, bytes per
    group)."""
    n, ns = blocks.shape[:2]
    if ggml_type == GGMLType.Q5_0:  # file block: f16 d | u32 qh (bit j: value j's bit 4) | qs (nibbles j, j + 16)
        qs = blocks[..., 6:22]
        low = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (n, nb, 32) the low 4 bits of values 0..31
        qh = blocks[..., 2:6].copy().view("<u4")  # (n, nb, 1)
        high = (qh >> np.arange(32, dtype=np.uint32)) & 1  # (n, nb, 32)
        records = [_f16_rows(blocks[..., 0:2]), _nibble_tile(low), _bit_planes(high, 1)]
    elif ggml_type in (GGMLType.Q4_K, GGMLType.Q5_K):
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


def pack_quantized(parts: list[np.ndarray], ggml_type: GGMLType, n: int, k: int, group_bytes: int) -> np.ndarray:
    """File bytes of a block-quantized type, as row blocks (n_i, row_bytes) that stack into n rows -> packed
    groups, 64-byte aligned, ceil(n/16) groups.

    Q4_0, Q4_1 and Q8_0 are repacked by the C core (csrc/layout.c: a strided copy of each block field), each part
    straight into its groups when the parts before it fill whole groups; Q5_0 (whose high bits are regrouped) and the
    k-quants here, with numpy.
    """
    geometry = BLOCK_GEOMETRY[ggml_type]
    groups = -(-n // ROWS)
    out = aligned_empty(groups * group_bytes).reshape(groups, group_bytes)
    if ggml_type in (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0):
        if any(part.shape[0] % ROWS for part in parts[:-1]):  # a group would straddle two parts
            parts = [np.concatenate(parts)]
        first_group = 0
        for part in parts:
            part_groups = -(-part.shape[0] // ROWS)
            _cpu.pack_blocks(int(ggml_type), part, part.shape[0], k, out[first_group:first_group + part_groups])
            first_group += part_groups
        return out.reshape(-1)
    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
    for start in range(0, n, CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        if chunk.shape[0] % ROWS:
            chunk = np.concatenate([chunk, np.zeros((ROWS - chunk.shape[0] % ROWS, chunk.shape[1]), np.uint8)])
        blocks = chunk.reshape(chunk.shape[0], k // geometry.block_size, geometry.type_size)
        g0 = start // ROWS
        out[g0 : g0 + chunk.shape[0] // ROWS] = _pack_rows(blocks, ggml_type)
    return out.reshape(-1)


def pack_float(parts: list[np.ndarray]) -> np.ndarray:
    """F32 / F16 / BF16 file bytes as row blocks (n_i, row_bytes) that stack: kept row-major, copied one after
    another into an aligned buffer."""
    out = aligned_empty(sum(part.nbytes for part in parts))
    start = 0
    for part in parts:
        out[start:start + part.nbytes] = part.reshape(-1)
        start += part.nbytes
    return out
