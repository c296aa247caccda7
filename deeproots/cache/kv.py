"""The KV cache: keys and values of every layer for one sequence, preallocated to the context.

The interface is small: `offset` (tokens stored), `update` (write this step's keys/values for a
layer, get back everything stored so far), `advance` (after the last layer) and `truncate`.
"""

from __future__ import annotations

import torch

from ..errors import RequestError


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 dtype: torch.dtype = torch.float32):
        self.max_tokens = max_tokens
        # (n_layers, n_kv_heads, max_tokens, head_dim): heads first so a layer's prefix is what SDPA takes.
        self.keys = torch.zeros(n_layers, n_kv_heads, max_tokens, head_dim, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.offset = 0

    def room(self) -> int:
        return self.max_tokens - self.offset

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `keys`/`values` (n_kv_heads, T, head_dim) at the current offset.

        Returns all keys and values of this layer so far, (n_kv_heads, offset + T, head_dim) each.
        """
        end = self.offset + keys.shape[1]
        if end > self.max_tokens:
            raise RequestError(f"the KV cache holds {self.max_tokens} tokens; this step needs {end}")
        self.keys[layer, :, self.offset:end] = keys
        self.values[layer, :, self.offset:end] = values
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.offset += n_tokens

    def truncate(self, n_tokens: int) -> None:
        """Forget everything after the first `n_tokens` (reuse a shared prefix, or start over with 0)."""
        if not 0 <= n_tokens <= self.offset:
            raise RequestError(f"cannot truncate a cache of {self.offset} tokens to {n_tokens}")
        self.offset = n_tokens

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes
