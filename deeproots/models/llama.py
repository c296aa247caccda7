"""Llama: pre-norm blocks of grouped-query attention with RoPE and a gated SiLU MLP.

Attribute names follow the GGUF tensor names (blk.N.attn_q, ffn_gate, ...).
"""

from __future__ import annotations

import math

import torch

from ..cache.kv import KVCache
from ..config import ModelConfig
from .layers import RotaryEmbedding, causal_attention, gated_mlp, rms_norm
from .weights import DenseLinear, GGUFWeights


class LlamaBlock:
    def __init__(self, config: ModelConfig, weights: GGUFWeights, index: int, rope: RotaryEmbedding):
        c, prefix = config, f"blk.{index}."
        self.config, self.index, self.rope = config, index, rope
        self.attn_norm = weights.tensor(prefix + "attn_norm.weight", (c.d_model,))
        self.attn_q = weights.linear(prefix + "attn_q.weight", c.d_model, c.n_heads * c.head_dim)
        self.attn_k = weights.linear(prefix + "attn_k.weight", c.d_model, c.n_kv_heads * c.head_dim)
        self.attn_v = weights.linear(prefix + "attn_v.weight", c.d_model, c.n_kv_heads * c.head_dim)
        self.attn_output = weights.linear(prefix + "attn_output.weight", c.n_heads * c.head_dim, c.d_model)
        self.ffn_norm = weights.tensor(prefix + "ffn_norm.weight", (c.d_model,))
        self.ffn_gate = weights.linear(prefix + "ffn_gate.weight", c.d_model, c.ffn_dim)
        self.ffn_up = weights.linear(prefix + "ffn_up.weight", c.d_model, c.ffn_dim)
        self.ffn_down = weights.linear(prefix + "ffn_down.weight", c.ffn_dim, c.d_model)

    def __call__(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        c, T = self.config, x.shape[0]
        h = rms_norm(x, self.attn_norm, c.norm_eps)  # (T, d_model)
        q = self.attn_q(h).view(T, c.n_heads, c.head_dim).transpose(0, 1)  # (n_heads, T, head_dim)
        k = self.attn_k(h).view(T, c.n_kv_heads, c.head_dim).transpose(0, 1)  # (n_kv_heads, T, head_dim)
        v = self.attn_v(h).view(T, c.n_kv_heads, c.head_dim).transpose(0, 1)
        q, k = self.rope(q, cache.offset), self.rope(k, cache.offset)
        keys, values = cache.update(self.index, k, v)  # (n_kv_heads, offset + T, head_dim)
        attended = causal_attention(q, keys, values, scale=1.0 / math.sqrt(c.head_dim))  # (n_heads, T, head_dim)
        x = x + self.attn_output(attended.transpose(0, 1).reshape(T, c.n_heads * c.head_dim))
        h = rms_norm(x, self.ffn_norm, c.norm_eps)
        return x + gated_mlp(h, self.ffn_gate, self.ffn_up, self.ffn_down)


class Llama:
    rope_style = "interleaved"

    def __init__(self, config: ModelConfig, weights: GGUFWeights, max_tokens: int):
        c = config
        self.config = config
        self.token_embd = weights.tensor("token_embd.weight", (c.vocab_size, c.d_model))  # (vocab, d_model)
        rope = RotaryEmbedding(c.rope_dim, c.rope_theta, max_tokens, scale=c.rope_scale, style=self.rope_style)
        self.blocks = [LlamaBlock(c, weights, i, rope) for i in range(c.n_layers)]
        self.output_norm = weights.tensor("output_norm.weight", (c.d_model,))
        if weights.has("output.weight"):
            self.output = weights.linear("output.weight", c.d_model, c.vocab_size)
        else:  # small models tie the output projection to the token embeddings
            self.output = DenseLinear(self.token_embd)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, *, all_logits: bool = False) -> torch.Tensor:
        """Logits for tokens (T,) that follow the cache's contents; advances the cache.

        Returns (T, vocab) with `all_logits`, else (1, vocab) for the last position only, which
        spares prefill the output projection of every other position.
        """
        x = self.token_embd[tokens]  # (T, d_model)
        for block in self.blocks:
            x = block(x, cache)
        cache.advance(tokens.shape[0])
        if not all_logits:
            x = x[-1:]
        return self.output(rms_norm(x, self.output_norm, self.config.norm_eps))
