"""OLMoE: Qwen's blocks (half-split RoPE) with a mixture of experts, and q/k RMSNorms over all heads at once.

Its q norm spans the whole query projection (n_heads * head_dim) and its k norm the whole key projection, where
Qwen 3's normalise each head alone (under tensor parallelism every head of the layer, gathered from the ranks:
Backend.over_all_heads); the experts come from models/moe.py like every family's.
"""

from __future__ import annotations

from .llama import LlamaBlock
from .qwen import Qwen


class OlmoeBlock(LlamaBlock):
    def qk_norm_width(self, kind: str) -> int:
        c = self.config
        return self.backend.model_heads(c.n_heads if kind == "q" else c.n_kv_heads, kind) * c.head_dim


class Olmoe(Qwen):
    block_class = OlmoeBlock
