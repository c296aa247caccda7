"""MXFP4 (OCP microscaling, gpt-oss's expert format): 32 e2m1 values sharing one power-of-two scale.

A block is one E8M0 exponent byte e and 16 bytes of 4-bit codes (byte j: value j in its low nibble, value j + 16
in its high nibble, as Q4_0). Code c means kvalues[c], e2m1's levels doubled to integers ([0, 1, 2, 3, 4, 6, 8,
12] and their negatives), times 2^(e - 128): ggml's GGML_E8M0_TO_FP32_HALF, the halving undoing the doubling.

The levels are small integers times a power of two, so a block is also a Q8_0 block (`mxfp4_as_q8_0`): scale
d = 2^(e - 128) in f16 and q = the level as an int8, which the CPU backend's int8 kernels run.
"""

from __future__ import annotations

import numpy as np

from .base import BlockFormat, Field, register
from .legacy import Q8_0, _pack_nibbles, _unpack_nibbles
from .types import GGMLType

# e2m1's eight magnitudes doubled, then their negatives (ggml's kvalues_mxfp4): integers, so they fit an int8
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


def e8m0_to_f32_half(e: np.ndarray) -> np.ndarray:
    """E8M0 exponent bytes (...) -> 2^(e - 128) as float32, built from its bits (subnormal for e < 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


@register
class MXFP4(BlockFormat):
    """value = kvalues[code] * 2^(e - 128)."""

    ggml_type = GGMLType.MXFP4
    layout = (Field("e", 1), Field("qs", 16))

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        e, qs = self.fields(blocks)
        with np.errstate(over="ignore"):  # e = 255 is 2^127: its larger levels are inf, as in ggml
            return KVALUES[_unpack_nibbles(qs)].astype(np.float32) * e8m0_to_f32_half(e)

    def quantize_blocks(self, values: np.ndarray) -> np.ndarray:
        """gguf-py's and ggml's choice: e puts the block's largest magnitude in the top level's octave, then each
        value takes the nearest level (the first of equals)."""
        amax = np.abs(values).max(axis=-1, keepdims=True)  # (n_blocks, 1)
        with np.errstate(divide="ignore"):
            # below 2^-125 gguf-py's cast wraps around (ggml's is undefined); the smallest exponent keeps such blocks
            e = np.maximum(np.where(amax > 0, np.floor(np.log2(amax)) - 2 + 127, 0), 0).astype(np.uint8)
        levels = e8m0_to_f32_half(e)[:, :, None] * KVALUES.astype(np.float32)  # (n_blocks, 1, 16)
        codes = np.abs(levels - values[:, :, None]).argmin(axis=-1)  # (n_blocks, 32)
        out = np.empty((len(values), self.type_size), np.uint8)
        e_out, qs_out = self.fields(out)
        e_out[:] = e
        qs_out[:] = _pack_nibbles(codes.astype(np.uint8))
        return out


# Q8_0's f16 scale holds 2^-24 .. 2^15 exactly: exponents 104 .. 143, and up to 146 with the level shifted into q
# (12 * 2^3 = 96 still fits an int8).
_F16_SMALLEST, _F16_LARGEST = 104, 143


def mxfp4_as_q8_0(raw: np.ndarray) -> np.ndarray:
    """MXFP4 bytes -> Q8_0 bytes (34 per block of 32, twice MXFP4's 17) of the same values wherever the exponent e is
    in 104 .. 146, which covers weights from 2^-24 to 2^19; a block below rounds to multiples of 2^-24 (an error under
    2^-25), one above clips its q at 127."""
    source, target = MXFP4(), Q8_0()
    blocks = np.ascontiguousarray(raw).reshape(-1, source.type_size)
    e, qs = source.fields(blocks)
    exponent = e.astype(np.int32)  # (n_blocks, 1)
    levels = KVALUES[_unpack_nibbles(qs)].astype(np.float32)  # (n_blocks, 32)
    d_exponent = np.clip(exponent, _F16_SMALLEST, _F16_LARGEST)
    # level * 2^(e - d's exponent): exact integers in range; below it a rounding, above it a clip
    q = np.clip(np.rint(np.ldexp(levels, exponent - d_exponent)), -127, 127).astype(np.int8)
    out = np.empty((len(blocks), target.type_size), np.uint8)
    d_out, qs_out = target.fields(out)
    d_out[:] = np.ldexp(np.float32(1), d_exponent - 128).astype("<f2").view(np.uint8)
    qs_out[:] = q.view(np.uint8)
    return out.reshape(-1)
