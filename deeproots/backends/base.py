"""The seam between the model code and the machine it runs on.

A Backend owns everything that differs between ways of executing a model:
- where arrays live (`from_host` / `to_host`: numpy on the CPU; a device array library elsewhere),
- how each weight is placed (`linear`, `embedding`, `vector`: dense float32, packed block formats, a device layout
  or a rank's shard) and the `primitives` that run over what it placed (norms, RoPE, attention, gating, routing),
- where the KV cache is stored (`kv_cache`: f32 / f16 / q8_0 rows, on a device or split by heads).
The model code (models/*.py) is written once against this: it asks the backend, never which backend it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ..cache.kv import KVCache, KVLayout
from ..formats.gguf import TensorInfo


@dataclass(frozen=True)
class Primitives:
    rms_norm: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (x (T, d), weight (d,), eps) -> (T, d)
    rotate_: Callable[..., None]  # (rope, x (T, heads, D), start), in place
    # (q (n_heads, T, D), k, v (n_kv_heads, L, D), scale, window=None, sinks=None) -> (T, n_heads * D)
    attention: Callable[..., np.ndarray]
    silu_mul: Callable[[np.ndarray], np.ndarray]  # (T, 2F) [gate | up] -> (T, F)
    gelu_mul: Callable[[np.ndarray], np.ndarray]  # (T, 2F) [gate | up] -> (T, F)
    # One layer's RoPE, cache update and attention for sequences packed in qkv (N, n_heads + 2 n_kv_heads, D):
    # (rope, qkv, n_heads, caches, lengths, layer, scale, window, sinks=None) -> (N, n_heads * D); caches' offsets
    # do not move; sinks (n_heads,) or None: see formulas.causal_attention
    attend_sequences: Callable[..., np.ndarray]
    # A mixture of experts' router: (logits (N, n_experts), top_k, normalize) -> (ids (N, top_k) on the host, most
    # probable first, weights (N, top_k) float32); see formulas.route
    route: Callable[..., tuple]
    # (expert rows (N * k, d), weights (N, k), order (N * k,)) -> (N, d): see formulas.combine_experts
    combine_experts: Callable[..., np.ndarray]


def per_sequence(rotate_: Callable, attention: Callable) -> Callable[..., np.ndarray]:
    """attend_sequences as a loop over the sequences: RoPE, cache update, attention, one sequence after another."""
    def attend_sequences(rope, qkv: np.ndarray, n_heads: int, caches, lengths, layer: int,
                         scale: float, window: int | None, sinks: np.ndarray | None = None) -> np.ndarray:
        n_kv = (qkv.shape[1] - n_heads) // 2
        outputs, start = [], 0
        for cache, T in zip(caches, lengths):
            rows = qkv[start:start + T]
            rotate_(rope, rows[:, :n_heads + n_kv], cache.offset)  # q and k, in place
            q = rows[:, :n_heads].swapaxes(0, 1)  # (n_heads, T, head_dim)
            keys, values = cache.update(layer, rows[:, n_heads:n_heads + n_kv].swapaxes(0, 1),
                                        rows[:, n_heads + n_kv:].swapaxes(0, 1))  # (n_kv_heads, L, head_dim)
            outputs.append(attention(q, keys, values, scale, window=window, sinks=sinks))  # (T, n_heads * D)
            start += T
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
    return attend_sequences


class WeightSource(Protocol):
    """What a backend reads weights through (models/weights.py's GGUFWeights): names checked against shapes."""

    def info(self, name: str, expected_shape: tuple[int, ...]) -> TensorInfo: ...  # type and GGUF shape, checked
    def tensor(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray: ...  # float32, row-major
    def raw(self, name: str) -> np.ndarray: ...  # the stored block bytes
    def release_pages(self) -> None: ...  # what was read of the file so far is no longer needed


Linear = Callable[[np.ndarray], np.ndarray]  # (T, in_features) -> (T, out_features)


class Backend(ABC):
    name: str
    primitives: Primitives
    default_kv_type: str  # the KV cache's element type when the user names none
    # Who copies, reuses and drops prefix-cache blocks as this process does (engine/prefix_cache.py): None here; a
    # parallel group's rank 0, whose caches hold its own heads or layers only, has the other ranks do the same with
    # theirs (parallel/leader.py's Leader).
    prefix_mirror = None
    # How many steps the engine keeps in flight, each over its own sequences: a pipeline's stages work on different
    # steps at once (parallel/pipeline.py); one elsewhere.
    steps_in_flight: int = 1

    def from_host(self, array: np.ndarray) -> np.ndarray:
        """A host (numpy) array where this backend's primitives read it: the array itself on the CPU."""
        return array

    def to_host(self, array: np.ndarray) -> np.ndarray:
        """A result (logits, hidden states) as a numpy array on the host."""
        return array

    def vector(self, values: np.ndarray) -> np.ndarray:
        """A small float32 tensor (a norm weight, a bias) placed where the primitives read it."""
        return self.from_host(values)

    @abstractmethod
    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """One product computing the named matrices (out_features[i], in_features) of the same input side by side:
        (T, in_features) -> (T, sum(out_features))."""

    @abstractmethod
    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]):
        """The experts (backends/linears.py's Experts): one product per expert e computing slice e of each named 3-d
        tensor (n_experts, out_features[i], in_features) side by side, (T, in_features) -> (T, sum(out_features)),
        and `grouped(x, chosen, starts)`, several experts' products over rows of their own."""

    def mixture_class(self, moe_class: type) -> type:
        """The class that runs a block's mixture of experts (models/moe.py's MixtureOfExperts or a family's
        subclass) over what this backend placed: the model's own here."""
        return moe_class

    @abstractmethod
    def embedding(self, source: WeightSource, name: str, vocab_size: int, width: int):
        """A table indexed by token ids (N,) -> (N, width) float32."""

    def kv_cache(self, layout: KVLayout, max_tokens: int, kv_type: str | None = None) -> KVCache:
        """An empty cache for `max_tokens` positions, in host memory on the CPU backends."""
        return KVCache(*layout, max_tokens, kv_type=kv_type or self.default_kv_type)

    def begin_step(self, tokens: np.ndarray, caches, lengths) -> None:
        """Called before each forward pass over `tokens` (N,) of the sequences of `caches` (a parallel backend's
        rank 0 sends the step to its other ranks here)."""

    def stage_input(self, embed: Callable[[], np.ndarray], n_tokens: int) -> np.ndarray:
        """The hidden states (N, d_model) the first layer here takes: the embeddings (`embed()`) here; a later
        pipeline stage receives them from the stage before it."""
        return embed()

    def stage_output(self, x: np.ndarray) -> Callable[[], np.ndarray | None]:
        """A call giving the last layer's output (N, d_model) as the final norm takes it: x itself here; a pipeline
        stage passes x on, and rank 0's call waits for the last stage's states (None: another rank finishes)."""
        return lambda: x

    def reduce_shards(self, partial: np.ndarray) -> np.ndarray:
        """A sum of products over a rank's shard of the inputs (T, d_model), summed over the ranks: itself here."""
        return partial

    def model_heads(self, held: int, kind: str) -> int:
        """How many query (`kind` "q") or key ("k") heads a layer has in all, of which `held` are computed here: all
        of them here (a tensor-parallel rank holds some)."""
        return held

    def over_all_heads(self, heads: np.ndarray, kind: str, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """This process's heads (N, held, head_dim) of f over all the layer's query (`kind` "q") or key ("k") heads
        (N, all, head_dim) -> the same shape (OLMoE's q/k norms span them): f(heads) here; a tensor-parallel rank
        gathers the other ranks' heads for f."""
        return f(heads)

    def decode_step(self, net, tokens: np.ndarray, caches) -> np.ndarray | None:
        """Host logits (B, vocab) of one token (B,) of each of B sequences by a means of the backend's own (the CUDA
        backend's graphs), the caches advanced; None: the network runs the step itself, as on the CPU. Offered every
        decode step of Llama.forward_batch and of the engine (engine/runner.py)."""
        return None

    def check_memory(self, tensors: list[TensorInfo], kv_bytes: int) -> None:
        """Before a load: refuse one whose weights (the file's `tensors`) and a cache of `kv_bytes` cannot fit where
        this backend places them. Host memory is not checked here (the kernel pages a mapped file in and out)."""

    def finish(self, source: WeightSource) -> None:
        """Called once the model took all its weights (e.g. to write a cache of what placing them made)."""
