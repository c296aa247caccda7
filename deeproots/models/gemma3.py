"""Gemma 3: Llama's blocks with Gemma's extras.

- five sliding-window layers to every global one, with their own RoPE base (10,000 unless the file says);
- an RMSNorm after attention and after the MLP as well as before them;
- a GELU-gated MLP (tanh approximation); embeddings scaled by sqrt(d_model);
- RoPE in HF's half-split ("neox") layout.
Norm weights in GGUF files already include Gemma's "+1" (the converter adds it; formats/hf_folder.py
does the same for HF checkpoints), so the plain RMSNorm applies.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..backends.formulas import RotaryEmbedding
from ..cache.kv import KVCache
from ..config import ModelConfig
from ..formats.names import GEMMA3_GLOBAL_LAYER_EVERY
from .llama import Llama, LlamaBlock
from .weights import GGUFWeights

LOCAL_ROPE_THETA = 10_000.0


class Gemma3Block(LlamaBlock):
    def __init__(self, config: ModelConfig, weights: GGUFWeights, index: int, rope: RotaryEmbedding,
                 window: int | None):
        super().__init__(config, weights, index, rope, window)
        prefix = f"blk.{index}."
        self.post_attention_norm = weights.vector(prefix + "post_attention_norm.weight", config.d_model)
        self.post_ffw_norm = weights.vector(prefix + "post_ffw_norm.weight", config.d_model)

    def __call__(self, x: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int]) -> np.ndarray:
        c, ops = self.config, self.ops
        attended = self.project(self.attention(ops.rms_norm(x, self.attn_norm, c.norm_eps), caches, lengths))
        x = x + ops.rms_norm(attended, self.post_attention_norm, c.norm_eps)
        mlp = self.reduce(self.mlp(ops.rms_norm(x, self.ffn_norm, c.norm_eps)))
        return x + ops.rms_norm(mlp, self.post_ffw_norm, c.norm_eps)

    def mlp(self, h: np.ndarray) -> np.ndarray:
        return self.ffn_down(self.ops.gelu_mul(self.ffn_gate_up(h)))


class Gemma3(Llama):
    rope_style = "neox"
    block_class = Gemma3Block

    def layer_attention(self, index: int) -> tuple[float, float, int | None]:
        c = self.config
        if (index + 1) % GEMMA3_GLOBAL_LAYER_EVERY == 0 or c.sliding_window is None:
            return c.rope_theta, c.rope_scale, None
        return c.rope_theta_local or LOCAL_ROPE_THETA, 1.0, c.sliding_window

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return super().embed(tokens) * np.float32(math.sqrt(self.config.d_model))
