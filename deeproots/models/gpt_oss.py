"""gpt-oss (OpenAI's open-weight mixture of experts): Llama's blocks, as llama.cpp's `gpt-oss` architecture has them.

- attention: q/k/v and output biases, a learned sink logit per head in the softmax (LlamaBlock picks both up from
  the tensors), sliding-window (128) and full layers alternating from a sliding one, YaRN RoPE in HF's half-split
  ("neox") layout;
- the norm before the MLP is stored as `post_attention_norm`;
- a mixture of experts whose router and experts have biases, routing by a softmax over the top-k logits only, and
  experts gated by a clamped SwiGLU: min(gate, 7) * sigmoid(1.702 * gate) * (clip(up, -7, 7) + 1) (llama.cpp's
  swiglu_oai; transformers' GptOssExperts with its gate and up interleaved, which the converter splits).
"""

from __future__ import annotations

import numpy as np

from ..backends.formulas import clamped_swiglu
from ..formats.names import GPT_OSS_SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT
from .llama import Llama, LlamaBlock
from .moe import MixtureOfExperts


class GptOssExperts(MixtureOfExperts):
    def route(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A softmax over the top-k logits alone: the top-k probabilities rescaled to sum to 1, whatever the file's
        expert_weights_norm says."""
        return self.ops.route(self.router_logits(h), self.experts.used_count, True)

    def gate(self, gate_up: np.ndarray) -> np.ndarray:
        return clamped_swiglu(gate_up, GPT_OSS_SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT)


class GptOssBlock(LlamaBlock):
    ffn_norm_name = "post_attention_norm"
    moe_class = GptOssExperts


class GptOss(Llama):
    rope_style = "neox"
    block_class = GptOssBlock
    honours_yarn = True

    def layer_attention(self, index: int) -> tuple[float, float, int | None]:
        """Even layers attend within the sliding window, odd ones to every key (llama.cpp's swa pattern of 2)."""
        c = self.config
        return c.rope_theta, c.rope_scale, c.sliding_window if index % 2 == 0 else None
