"""The KV cache on a torch device (the CUDA backend's): cache/kv.py's KVCache with its storage in torch tensors.

Keys and values are float16 (default), float32 or q8_0 rows, (n_layers, n_kv_heads, max_tokens, row) each, allocated
once on the device; `update` writes a step's rows in place and returns views, which the attention kernels read where
they lie. q8_0 rows are the host cache's bytes (per 32 values an f16 scale and 32 int8, ggml's reference
quantizer), quantized on the device.
"""

from __future__ import annotations

import torch

from .kv import KVCache, QK, Q8_0_BYTES

DEVICE_KV_TYPES = {"f32": torch.float32, "f16": torch.float16, "q8_0": torch.uint8}


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x (..., D) float32, D a multiple of 32 -> (..., D / 32 * 34) uint8 Q8_0 blocks, as ggml's quantize_row_q8_0_ref:
    d = max |x| / 127 stored as f16, q = round-half-away(x / d) with 1/d taken in float32."""
    blocks = x.float().reshape(*x.shape[:-1], -1, QK)  # (..., D / 32, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127  # (..., D / 32, 1)
    inverse = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    scaled = blocks * inverse
    q = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).to(torch.int8)  # roundf: half away from zero
    packed = torch.cat([d.half().view(torch.uint8), q.view(torch.uint8)], dim=-1)  # (..., D / 32, 34)
    return packed.reshape(*x.shape[:-1], -1)


def dequantize_q8_0(rows: torch.Tensor) -> torch.Tensor:
    """Q8_0 rows (..., D / 32 * 34) uint8 -> (..., D) float32."""
    blocks = rows.reshape(*rows.shape[:-1], -1, Q8_0_BYTES)  # (..., D / 32, 34)
    d = blocks[..., :2].contiguous().view(torch.float16).float()  # (..., D / 32, 1)
    q = blocks[..., 2:].contiguous().view(torch.int8).float()  # (..., D / 32, 32)
    return (q * d).reshape(*rows.shape[:-1], -1)


class DeviceKVCache(KVCache):
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int, kv_type: str,
                 device: torch.device):
        self.device = device
        super().__init__(n_layers, n_kv_heads, head_dim, max_tokens, kv_type)

    def _zeros(self, shape: tuple[int, ...], kv_type: str) -> torch.Tensor:
        return torch.zeros(shape, dtype=DEVICE_KV_TYPES[kv_type], device=self.device)

    def _stored(self, new: torch.Tensor) -> torch.Tensor:
        """new (n_kv_heads, T, head_dim) float32 as the cache stores it: q8_0 bytes, or the cache's float type."""
        return quantize_q8_0(new) if self.kv_type == "q8_0" else new.to(self.keys.dtype)

    def _write(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        rows[...] = self._stored(new)

    def write_at(self, layer: int, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store one position's keys/values (n_kv_heads, 1, head_dim) at `position`, a (1,) int64 device tensor: the
        decode step's write, which a captured CUDA graph replays at the position the tensor holds then. The caller
        checks the room (the offset is the host's)."""
        self.keys[layer].index_copy_(1, position, self._stored(keys))
        self.values[layer].index_copy_(1, position, self._stored(values))

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, start:stop].clone(), self.values[:, :, start:stop].clone()
