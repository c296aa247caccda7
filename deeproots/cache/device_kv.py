"""The KV cache on a torch device (the CUDA backend's): cache/kv.py's KVCache with its storage in torch tensors.

Keys and values are float16 (default) or float32, (n_layers, n_kv_heads, max_tokens, head_dim) each, allocated once
on the device; `update` writes a step's rows in place and returns views, which the attention kernels read where
they lie. q8_0 rows are not offered on the device yet.
"""

from __future__ import annotations

import torch

from ..errors import RequestError
from .kv import KVCache

DEVICE_KV_TYPES = {"f32": torch.float32, "f16": torch.float16}


class DeviceKVCache(KVCache):
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int, kv_type: str,
                 device: torch.device):
        if kv_type not in DEVICE_KV_TYPES:
            raise RequestError(f"the cuda backend's KV cache is one of {', '.join(DEVICE_KV_TYPES)}, got {kv_type!r}")
        self.device = device
        super().__init__(n_layers, n_kv_heads, head_dim, max_tokens, kv_type)

    def _zeros(self, shape: tuple[int, ...], kv_type: str) -> torch.Tensor:
        return torch.zeros(shape, dtype=DEVICE_KV_TYPES[kv_type], device=self.device)

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, :, start:stop].clone(), self.values[:, :, start:stop].clone()
