"""y = x @ W.T with W in its GGUF block bytes on the device: the dequantization fused into the product.

Two kernels over the same tiles (blocks.dequantize_tile):
- `skinny` (decode, up to SKINNY_ROWS rows): one program per BLOCK_N output columns holds every row of x, so each
  weight byte is read from memory once per step; the product is a broadcast multiply and a sum (no tensor cores:
  with 1..16 rows the step is bound by reading the weight, not by arithmetic).
- `tiled` (prefill): BLOCK_M x BLOCK_N output tiles, each weight tile dequantized into registers and fed to tl.dot
  (tensor cores on a GPU; tf32 inputs, float32 accumulation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ...errors import InternalError
from .blocks import TILE, dequantize_tile, geometry

SKINNY_ROWS = 16  # up to this many rows of x take the skinny kernel


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, y_ptr, M, N, K, row_bytes, FMT: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   TYPE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output columns = weight rows
    row_mask = rows < N
    m = tl.arange(0, BLOCK_M)  # (BLOCK_M,) every row of x
    m_mask = m < M
    columns = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, 32):
        w = dequantize_tile(w_ptr, rows, row_mask, row_bytes, k0, FMT, BLOCK_SIZE, TYPE_SIZE)  # (BLOCK_N, 32)
        x = tl.load(x_ptr + m[:, None] * K + k0 + columns[None, :], mask=m_mask[:, None], other=0.0)  # (BLOCK_M, 32)
        acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
    tl.store(y_ptr + m[:, None] * N + rows[None, :], acc, mask=m_mask[:, None] & row_mask[None, :])


@triton.jit
def _tiled_kernel(x_ptr, w_ptr, y_ptr, M, N, K, row_bytes, FMT: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  TYPE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < M
    columns = tl.arange(0, 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, 32):
        w = dequantize_tile(w_ptr, rows, row_mask, row_bytes, k0, FMT, BLOCK_SIZE, TYPE_SIZE)  # (BLOCK_N, 32)
        x = tl.load(x_ptr + m.to(tl.int64)[:, None] * K + k0 + columns[None, :], mask=m_mask[:, None], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)  # (BLOCK_M, BLOCK_N)
    tl.store(y_ptr + m.to(tl.int64)[:, None] * N + rows[None, :], acc, mask=m_mask[:, None] & row_mask[None, :])


SKINNY_BLOCK_N, TILED_BLOCK = 32, 64  # on a GPU: output columns per program (skinny), tile sides (tiled)
# Triton's interpreter runs one program after another in Python: there, few wide programs are seconds faster.
INTERPRETED_BLOCK_N = 4096
INTERPRETED = isinstance(_skinny_kernel, InterpretedFunction)


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, ggml_type: int, in_features: int, out_features: int,
                     block_n: int | None = None) -> torch.Tensor:
    """x (M, in_features) float32 @ W.T -> (M, out_features) float32; `weight` the (out_features * row bytes,)
    uint8 blocks of W (rows of in_features values) on x's device. `block_n` (a power of two >= 16) overrides the
    output columns a program computes (tests use it to cover many programs under the interpreter)."""
    block_size, type_size = geometry(ggml_type)
    row_bytes = in_features // block_size * type_size
    if x.dim() != 2 or x.shape[1] != in_features or in_features % TILE or weight.numel() != out_features * row_bytes:
        raise InternalError(f"quantized_linear: x {tuple(x.shape)} and {weight.numel()} weight bytes do not fit "
                            f"({out_features}, {in_features}) of type {ggml_type}")
    x = x.contiguous().float()
    M = x.shape[0]
    y = torch.empty((M, out_features), dtype=torch.float32, device=x.device)
    if M == 0:
        return y
    if M <= SKINNY_ROWS:
        block_m = triton.next_power_of_2(M)
        # the (BLOCK_M, BLOCK_N, 32) product within Triton's 2^20 elements a tensor
        block_n = block_n or (min(INTERPRETED_BLOCK_N, 2**15 // block_m) if INTERPRETED else SKINNY_BLOCK_N)
        grid = (triton.cdiv(out_features, block_n),)
        _skinny_kernel[grid](x, weight, y, M, out_features, in_features, row_bytes, ggml_type, block_size, type_size,
                             BLOCK_M=block_m, BLOCK_N=block_n)
    else:
        block_m, block_n = TILED_BLOCK, block_n or (INTERPRETED_BLOCK_N if INTERPRETED else TILED_BLOCK)
        grid = (triton.cdiv(out_features, block_n), triton.cdiv(M, block_m))
        _tiled_kernel[grid](x, weight, y, M, out_features, in_features, row_bytes, ggml_type, block_size, type_size,
                            BLOCK_M=block_m, BLOCK_N=block_n)
    return y
