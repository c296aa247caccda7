"""Llama: pre-norm blocks of grouped-query attention with RoPE and a gated SiLU MLP.

The optional parts other families add are switched on by the tensors and metadata a file has:
q/k/v biases (Qwen 2), per-head q/k norms (Qwen 3, Gemma 3), a sliding window (Mistral, Gemma 3),
an attention scale other than 1/sqrt(head_dim), an output-projection bias and attention sinks (gpt-oss).
qwen.py, gemma3.py and gpt_oss.py build on these classes.

Attribute names follow the GGUF tensor names (blk.N.attn_q, ffn_gate, ...). A forward pass takes
the new tokens of one or more sequences packed into one (N,) int64 array: the matrix products run over
all N rows at once (each weight is read once per step, whatever the batch), while attention runs per
sequence over that sequence's own KV cache.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..backends.formulas import RotaryEmbedding
from ..cache.kv import KVCache
from ..config import ModelConfig
from .moe import MixtureOfExperts
from .weights import GGUFWeights


class LlamaBlock:
    ffn_norm_name = "ffn_norm"  # the norm before the MLP (gpt-oss's files call it post_attention_norm)
    moe_class = MixtureOfExperts

    def __init__(self, config: ModelConfig, weights: GGUFWeights, index: int, rope: RotaryEmbedding,
                 window: int | None):
        c, prefix = config, f"blk.{index}."
        self.config, self.index, self.rope, self.window = config, index, rope, window
        self.cache_layer = index  # this layer's place in the KV cache (a pipeline stage holds its own layers only)
        self.ops = weights.primitives
        self.backend = weights.backend
        self.reduce = weights.backend.reduce_shards
        self.attention_scale = c.attention_scale or 1.0 / math.sqrt(c.head_dim)
        self.attn_norm = weights.vector(prefix + "attn_norm.weight", c.d_model)
        # q, k and v in one product: (N, d_model) -> (N, (n_heads + 2 * n_kv_heads) * head_dim)
        q_size, kv_size = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        qkv_names = [prefix + f"attn_{part}.weight" for part in "qkv"]
        self.attn_qkv = weights.stacked_linear(qkv_names, c.d_model, [q_size, kv_size, kv_size])
        # Qwen 2 adds biases to q, k and v: (q_size + 2 * kv_size,) or None
        self.attn_qkv_bias = weights.optional_stack([prefix + f"attn_{part}.bias" for part in "qkv"],
                                                    [q_size, kv_size, kv_size])
        # Qwen 3 and Gemma 3 RMS-normalise every query and key head before RoPE (OLMoE: all heads at once):
        # (qk_norm_width,) or None
        self.attn_q_norm = weights.optional_stack([prefix + "attn_q_norm.weight"], [self.qk_norm_width("q")])
        self.attn_k_norm = weights.optional_stack([prefix + "attn_k_norm.weight"], [self.qk_norm_width("k")])
        self.attn_output = weights.linear(prefix + "attn_output.weight", c.n_heads * c.head_dim, c.d_model)
        # gpt-oss: a bias on the output projection (d_model,), and a sink logit per head (n_heads,); or None
        self.attn_output_bias = weights.optional_stack([prefix + "attn_output.bias"], [c.d_model])
        self.attn_sinks = weights.optional_stack([prefix + "attn_sinks.weight"], [c.n_heads])
        self.ffn_norm = weights.vector(prefix + self.ffn_norm_name + ".weight", c.d_model)
        # A router tensor means a mixture of experts in place of the MLP (Mixtral, Qwen MoE, OLMoE, gpt-oss).
        moe_class = weights.backend.mixture_class(self.moe_class)  # the model's own, or the backend's variant
        self.moe = moe_class(c, weights, prefix) if weights.has(prefix + "ffn_gate_inp.weight") else None
        if self.moe is None:
            # gate and up in one product: (N, d_model) -> (N, 2 * ffn_dim)
            self.ffn_gate_up = weights.stacked_linear([prefix + "ffn_gate.weight", prefix + "ffn_up.weight"],
                                                      c.d_model, [c.ffn_dim, c.ffn_dim])
            self.ffn_down = weights.linear(prefix + "ffn_down.weight", c.ffn_dim, c.d_model)

    def qk_norm_width(self, kind: str) -> int:
        """The width a q (`kind` "q") or k ("k") norm normalises over: each head alone (OLMoE: all of them)."""
        return self.config.head_dim

    def _norm_heads(self, heads: np.ndarray, weight: np.ndarray, kind: str) -> None:
        """RMS-normalise `heads` (N, n, head_dim) in place over spans of the weight's width: each head, or (OLMoE) all
        the layer's q (`kind` "q") or k heads at once, which under tensor parallelism the backend gathers."""
        def norm(heads: np.ndarray) -> np.ndarray:  # (N, n, head_dim) -> normed, the same shape
            # Rows of one head are contiguous: the first reshape copies the strided heads into contiguous rows (numpy
            # and torch alike), the second views them as spans of the weight's width. One head (a single KV head:
            # Gemma 3 270M's, or a tensor-parallel rank's) is the exception, kept as a strided view: x * 1 copies it,
            # exactly.
            rows = heads.reshape(-1, heads.shape[-1]).reshape(-1, weight.shape[0])
            if heads.shape[1] == 1:
                rows = rows * 1
            return self.ops.rms_norm(rows, weight, self.config.norm_eps).reshape(heads.shape)

        heads[...] = norm(heads) if weight.shape[0] == heads.shape[-1] else \
            self.backend.over_all_heads(heads, kind, norm)

    def attention(self, h: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int]) -> np.ndarray:
        """Self-attention of packed rows h (N, d_model), sequence by sequence; returns (N, n_heads * head_dim)."""
        c, ops = self.config, self.ops
        qkv = self.attn_qkv(h)  # (N, (n_heads + 2 * n_kv_heads) * head_dim)
        if self.attn_qkv_bias is not None:
            qkv += self.attn_qkv_bias
        qkv = qkv.reshape(-1, c.n_heads + 2 * c.n_kv_heads, c.head_dim)  # (N, q, k and v heads, head_dim)
        if self.attn_q_norm is not None:
            self._norm_heads(qkv[:, :c.n_heads], self.attn_q_norm, "q")
        if self.attn_k_norm is not None:
            self._norm_heads(qkv[:, c.n_heads:c.n_heads + c.n_kv_heads], self.attn_k_norm, "k")
        return ops.attend_sequences(self.rope, qkv, c.n_heads, caches, lengths, self.cache_layer,
                                    self.attention_scale, self.window, self.attn_sinks)  # RoPE, cache, attention

    def project(self, attended: np.ndarray) -> np.ndarray:
        """The output projection of attention's (N, n_heads * head_dim) -> (N, d_model), summed over the ranks
        (under tensor parallelism a product over this rank's heads is a partial sum), with its bias if any."""
        out = self.reduce(self.attn_output(attended))
        if self.attn_output_bias is not None:
            out += self.attn_output_bias
        return out

    def __call__(self, x: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int]) -> np.ndarray:
        c, ops = self.config, self.ops
        x = x + self.project(self.attention(ops.rms_norm(x, self.attn_norm, c.norm_eps), caches, lengths))
        # Under tensor parallelism the MLP's down projection is a partial sum over this rank's hidden units too.
        return x + self.reduce(self.mlp(ops.rms_norm(x, self.ffn_norm, c.norm_eps)))

    def mlp(self, h: np.ndarray) -> np.ndarray:
        """Gated MLP, or the mixture of experts: (N, d_model) -> (N, d_model)."""
        if self.moe is not None:
            return self.moe(h)
        return self.ffn_down(self.ops.silu_mul(self.ffn_gate_up(h)))


class Llama:
    rope_style = "interleaved"  # see RotaryEmbedding: llama GGUF files permute q and k rows
    block_class = LlamaBlock
    honours_yarn = False  # YaRN keys are read by the families tested with them (gpt-oss); the others keep plain RoPE

    def __init__(self, config: ModelConfig, weights: GGUFWeights, max_tokens: int, *, layers: range | None = None,
                 ends: bool = True):
        """`layers`: build only these (a pipeline stage; default all); `ends`: with the embeddings, final norm and
        output projection (a pipeline's rank 0)."""
        c = config
        self.config = config
        self.backend = weights.backend
        self.ops = weights.primitives
        if ends:
            self.token_embd = weights.embedding("token_embd.weight", c.vocab_size, c.d_model)  # [tokens] -> (T, d)
        ropes: dict[tuple[float, float], RotaryEmbedding] = {}  # layers of one kind share their tables
        self.blocks = []
        for index in layers if layers is not None else range(c.n_layers):
            theta, scale, window = self.layer_attention(index)
            if (theta, scale) not in ropes:
                ropes[theta, scale] = RotaryEmbedding(c.rope_dim, theta, max_tokens, scale=scale, style=self.rope_style,
                                                      yarn=c.rope_yarn if self.honours_yarn else None)
            self.blocks.append(self.block_class(c, weights, index, ropes[theta, scale], window))
            self.blocks[-1].cache_layer = len(self.blocks) - 1
        if ends:
            self.output_norm = weights.vector("output_norm.weight", c.d_model)
            # Small models tie the output projection to the token embeddings.
            output_name = "output.weight" if weights.has("output.weight") else "token_embd.weight"
            self.output = weights.linear(output_name, c.d_model, c.vocab_size)

    def layer_attention(self, index: int) -> tuple[float, float, int | None]:
        """(RoPE base, RoPE position scale, sliding window or None) of layer `index`: the same for every layer."""
        c = self.config
        return c.rope_theta, c.rope_scale, c.sliding_window

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids (N,) -> embeddings (N, d_model)."""
        return self.token_embd[tokens]

    def forward(self, tokens: np.ndarray, cache: KVCache, *, all_logits: bool = False) -> np.ndarray:
        """One sequence: logits (T, vocab) with `all_logits`, else (1, vocab) for its last token."""
        return self.forward_batch(tokens, [cache], [tokens.shape[0]], all_logits=all_logits)

    def hidden_states(self, tokens: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int]) -> np.ndarray:
        """Final normed hidden states (N, d_model) of tokens (N,) packed from several sequences.

        Sequence i owns the next lengths[i] tokens and caches[i]; every cache advances.
        """
        return self.launch(tokens, caches, lengths)()

    def launch(self, tokens: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int]
               ) -> Callable[[], np.ndarray | None]:
        """hidden_states in two halves: this rank's layers now, and a call giving the states. On a pipeline's rank 0
        that call waits for the last stage, so another step may run stage 0 meanwhile."""
        self.backend.begin_step(tokens, caches, lengths)
        x = self.backend.stage_input(lambda: self.embed(tokens), len(tokens))  # (N, d_model)
        for block in self.blocks:
            x = block(x, caches, lengths)
        for cache, T in zip(caches, lengths):
            cache.advance(T)
        returned = self.backend.stage_output(x)  # a pipeline stage's output goes on to the next stage

        def states() -> np.ndarray | None:
            x = returned()
            return None if x is None else self.ops.rms_norm(x, self.output_norm, self.config.norm_eps)
        return states

    def forward_batch(self, tokens: np.ndarray, caches: Sequence[KVCache], lengths: Sequence[int], *,
                      all_logits: bool = False) -> np.ndarray:
        """Logits for the new tokens of several sequences, packed as in `hidden_states`.

        Returns host (numpy) logits (N, vocab) with `all_logits`, else (len(caches), vocab): each sequence's last
        token, which spares prefill the output projection of every other position.
        """
        if not all_logits and all(T == 1 for T in lengths):  # a decode step: the backend may replay it (CUDA graphs)
            logits = self.backend.decode_step(self, tokens, caches)
            if logits is not None:
                return logits
        hidden = self.hidden_states(tokens, caches, lengths)
        if not all_logits:
            hidden = hidden[np.cumsum(lengths) - 1]  # (B, d_model): last row of each sequence
        return self.logits(hidden)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Final hidden states (N, d_model) -> logits (N, vocab) on the host, where sampling reads them."""
        return self.backend.to_host(self.output(hidden))
