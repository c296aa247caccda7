"""The reference backend: every matrix dequantized to float32 at load, every primitive the plain numpy formula.

Slow and obviously correct: what the fast backends are tested against, and what transformers is compared with.
"""

from __future__ import annotations

import numpy as np

from .base import Backend, Linear, Primitives, WeightSource, per_sequence
from .formulas import RotaryEmbedding, causal_attention, combine_experts, gelu_mul, rms_norm, route, silu_mul
from .linears import DenseLinear, Experts

REFERENCE = Primitives(rms_norm=rms_norm, rotate_=RotaryEmbedding.rotate_, attention=causal_attention,
                       silu_mul=silu_mul, gelu_mul=gelu_mul,
                       attend_sequences=per_sequence(RotaryEmbedding.rotate_, causal_attention),
                       route=route, combine_experts=combine_experts)


class ReferenceBackend(Backend):
    name = "reference"
    primitives = REFERENCE
    default_kv_type = "f32"

    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        if len(names) == 1:  # the dense table itself: a tied embedding is then held once
            return DenseLinear(source.tensor(names[0], (out_features[0], in_features)))
        return DenseLinear(np.concatenate([source.tensor(name, (rows, in_features))
                                           for name, rows in zip(names, out_features)]))

    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]) -> Experts:
        parts = [source.tensor(name, (n_experts, rows, in_features)) for name, rows in zip(names, out_features)]
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # (E, sum(out_features), in)
        return Experts([DenseLinear(weight) for weight in stacked])  # views of one expert each

    def embedding(self, source: WeightSource, name: str, vocab_size: int, width: int) -> np.ndarray:
        return source.tensor(name, (vocab_size, width))  # (vocab, width), indexed by token ids
