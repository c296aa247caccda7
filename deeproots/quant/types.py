"""The GGML tensor types a GGUF file may name, with their block geometry.

A block of `block_size` values is stored in `type_size` bytes. The sizes are written as
arithmetic over the block's fields so they can be checked against ggml's structs.
"""

from dataclasses import dataclass
from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class BlockGeometry:
    block_size: int  # values per block
    type_size: int  # bytes per block


QK_K = 256  # values per super-block of the k-quants
K_SCALE_SIZE = 12  # bytes of packed 6-bit scales and mins in Q4_K / Q5_K

BLOCK_GEOMETRY: dict[GGMLType, BlockGeometry] = {
    GGMLType.F32: BlockGeometry(1, 4),
    GGMLType.F16: BlockGeometry(1, 2),
    GGMLType.BF16: BlockGeometry(1, 2),
    GGMLType.F64: BlockGeometry(1, 8),
    GGMLType.I8: BlockGeometry(1, 1),
    GGMLType.I16: BlockGeometry(1, 2),
    GGMLType.I32: BlockGeometry(1, 4),
    GGMLType.I64: BlockGeometry(1, 8),
    # d (f16), 32 x 4-bit quants
    GGMLType.Q4_0: BlockGeometry(32, 2 + 32 // 2),
    # d, m (f16), 32 x 4-bit quants
    GGMLType.Q4_1: BlockGeometry(32, 2 + 2 + 32 // 2),
    # d (f16), 32 high bits, 32 x low 4 bits
    GGMLType.Q5_0: BlockGeometry(32, 2 + 4 + 32 // 2),
    # d, m (f16), 32 high bits, 32 x low 4 bits
    GGMLType.Q5_1: BlockGeometry(32, 2 + 2 + 4 + 32 // 2),
    # d (f16), 32 x int8
    GGMLType.Q8_0: BlockGeometry(32, 2 + 32),
    # d, s (f32), 32 x int8
    GGMLType.Q8_1: BlockGeometry(32, 4 + 4 + 32),
    # scales (16 x 4+4 bits), 256 x 2-bit quants, d, dmin (f16)
    GGMLType.Q2_K: BlockGeometry(QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    # high-bit mask, 256 x low 2 bits, 12 bytes of 6-bit scales, d (f16)
    GGMLType.Q3_K: BlockGeometry(QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    # d, dmin (f16), scales/mins, 256 x 4-bit quants
    GGMLType.Q4_K: BlockGeometry(QK_K, 2 + 2 + K_SCALE_SIZE + QK_K // 2),
    # d, dmin (f16), scales/mins, 256 high bits, 256 x low 4 bits
    GGMLType.Q5_K: BlockGeometry(QK_K, 2 + 2 + K_SCALE_SIZE + QK_K // 8 + QK_K // 2),
    # 256 x low 4 bits, 256 x high 2 bits, 16 int8 scales, d (f16)
    GGMLType.Q6_K: BlockGeometry(QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    # d (f32), 256 x int8, 16 int16 block sums
    GGMLType.Q8_K: BlockGeometry(QK_K, 4 + QK_K + QK_K // 16 * 2),
    GGMLType.IQ2_XXS: BlockGeometry(QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: BlockGeometry(QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: BlockGeometry(QK_K, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: BlockGeometry(QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: BlockGeometry(32, 2 + 32 // 2),
    GGMLType.IQ3_S: BlockGeometry(QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: BlockGeometry(QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: BlockGeometry(QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    GGMLType.IQ1_M: BlockGeometry(QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.TQ1_0: BlockGeometry(QK_K, (QK_K - 4 * QK_K // 64) // 5 + QK_K // 64 + 2),
    GGMLType.TQ2_0: BlockGeometry(QK_K, QK_K // 4 + 2),
    GGMLType.MXFP4: BlockGeometry(32, 1 + 32 // 2),
}


def tensor_nbytes(ggml_type: GGMLType, n_elements: int) -> int:
    """Bytes taken by `n_elements` values of `ggml_type`; the caller checks divisibility."""
    geometry = BLOCK_GEOMETRY[ggml_type]
    return n_elements // geometry.block_size * geometry.type_size
