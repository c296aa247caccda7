"""The CPU backend: weights kept in their block formats and multiplied by the compiled C core (kernels/).

Matrices of a type the kernels run are repacked once at load into an interleaved layout of the same size (or mapped
from the packed cache on disk, cache/packed.py); other types are dequantized to float32. Norms, RoPE, attention and
SiLU gating run as compiled primitives that compute a row the same way whatever else is in the call.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from .. import kernels
from ..cache.packed import PackedCache
from ..formats.gguf import TensorInfo
from ..kernels.attention import batched_attention
from ..kernels.layouts import aligned_empty
from ..quant import GGMLType
from ..quant.mxfp4 import mxfp4_as_q8_0
from .base import Backend, Linear, Primitives, WeightSource
from .formulas import RotaryEmbedding, gelu_mul
from .linears import ConcatLinear, DenseLinear, Experts, PackedExperts, PackedLinear, QuantizedEmbedding


def _rotate_fast(rope: RotaryEmbedding, x: np.ndarray, start: int) -> None:
    kernels.rotary_embedding_(x, rope.cos, rope.sin, start, rope.rope_dim, rope.style == "interleaved")


def _attend_sequences_fast(rope: RotaryEmbedding, qkv: np.ndarray, n_heads: int, caches, lengths, layer: int,
                           scale: float, window: int | None, sinks: np.ndarray | None = None) -> np.ndarray:
    """RoPE, the cache update and attention of every sequence in one compiled call per layer, the same bits as the
    per-sequence loop (kernels.attention.batched_attention): one sequence too, which the loop's dozen Python-level
    calls and numpy f16 cache writes (4-10 us each, two a layer) cost 2-9% (docs/benchmarks.md)."""
    return batched_attention(qkv, n_heads, caches, lengths, layer, scale, window, rope.cos, rope.sin, rope.rope_dim,
                             rope.style == "interleaved", sinks)


# GELU gating (Gemma) stays numpy: a few ops per layer, too few to earn a kernel yet.
FAST = Primitives(rms_norm=kernels.rms_norm, rotate_=_rotate_fast, attention=kernels.cached_attention,
                  silu_mul=kernels.silu_mul, gelu_mul=gelu_mul, attend_sequences=_attend_sequences_fast,
                  route=kernels.route, combine_experts=kernels.combine_experts)


# Formats a kernel runs as Q8_0 blocks of the same values (MXFP4, gpt-oss's experts: 34/17 of the bytes, against 4 x
# 32/17 as the dense float32 that was the alternative).
AS_Q8_0 = {GGMLType.MXFP4: mxfp4_as_q8_0}


def kernel_type(ggml_type: int) -> int:
    """The block format a kernel runs this type as: MXFP4 widens to Q8_0 (quant/mxfp4.py)."""
    return GGMLType.Q8_0 if ggml_type in AS_Q8_0 else ggml_type


def _packable(infos: list[TensorInfo]) -> bool:
    """The tensors share one type that a kernel runs, so they can be packed into one weight."""
    ggml_type = infos[0].ggml_type
    return kernel_type(ggml_type) in kernels.kernel_types() and all(info.ggml_type == ggml_type for info in infos)


class CPUBackend(Backend):
    name = "cpu"
    primitives = FAST
    default_kv_type = "f16"  # halves the cache at no measurable perplexity cost (docs/benchmarks.md)

    def __init__(self, packed_cache: PackedCache | None = None):
        """`packed_cache`: the model file's packed weights on disk: maps those it has, keeps those packed anew."""
        self.packed_cache = packed_cache

    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """Matrices of one block format the kernels run are packed together: one kernel call, and the activations
        are quantized once instead of once per matrix. Others are dense, or side by side when the types differ."""
        infos = [source.info(name, (rows, in_features)) for name, rows in zip(names, out_features)]
        ggml_type = infos[0].ggml_type
        if _packable(infos):
            # GGUF stores a matrix row after row, so the matrices' rows stack into one weight.
            return self._packed(source, "+".join(names), lambda: [source.raw(name) for name in names], ggml_type,
                                (in_features, sum(out_features)))
        if len(names) == 1:
            return DenseLinear(source.tensor(names[0], (out_features[0], in_features)))
        return ConcatLinear([self.linear(source, [name], in_features, [rows]) for name, rows in zip(names, out_features)])

    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]) -> Experts:
        """Expert e's matrices are slice e of each 3-d tensor's bytes (GGUF stores experts one after another):
        packed per expert from those slices, without a copy of the tensor, into one buffer for all the experts (or
        mapped from the packed cache, where they lie one after another too). Other types are dense float32."""
        infos = [source.info(name, (n_experts, rows, in_features)) for name, rows in zip(names, out_features)]
        if not _packable(infos):
            parts = [source.tensor(name, (n_experts, rows, in_features)) for name, rows in zip(names, out_features)]
            return Experts([DenseLinear(np.concatenate([part[e] for part in parts])) for e in range(n_experts)])

        @functools.cache
        def stored() -> list[np.ndarray]:  # read once, and only if the packed cache lacks an expert
            return [source.raw(name).reshape(n_experts, -1) for name in names]  # (n_experts, bytes of one expert)

        shape, ggml_type = (in_features, sum(out_features)), infos[0].ggml_type
        stride = -(-kernels.packed_nbytes(kernel_type(ggml_type), *shape) // 64) * 64  # keeps each expert aligned

        @functools.cache
        def buffer() -> np.ndarray:  # allocated only if some expert is packed anew
            space = self._cache_space(n_experts * stride)
            return space if space is not None else aligned_empty(n_experts * stride)

        key = "+".join(names)
        return PackedExperts([self._packed(source, f"{key}[{e}]", lambda e=e: [part[e] for part in stored()],
                                           ggml_type, shape, into=lambda e=e: buffer()[e * stride:(e + 1) * stride])
                              for e in range(n_experts)])

    def _packed(self, source: WeightSource, key: str, parts: Callable[[], list[np.ndarray]], ggml_type: int,
                shape: tuple[int, int], into: Callable[[], np.ndarray] | None = None) -> PackedLinear:
        """One weight stacking the rows of `parts()` (their stored bytes), cached on disk under `key`: mapped from
        the cache when it has it, else packed from the file into the cache file being written (or `into()`, an
        aligned slice of a buffer that holds its siblings: experts packed one after another in one buffer read
        faster than apart, see benchmarks/bench_moe_layer.py)."""
        packed_type = kernel_type(ggml_type)
        cached = self.packed_cache.get(key, packed_type, *shape) if self.packed_cache is not None else None
        if cached is not None:
            return PackedLinear(cached)
        raw = parts()
        if ggml_type in AS_Q8_0:
            raw = [AS_Q8_0[ggml_type](part) for part in raw]
        weight = kernels.pack_weight(raw, packed_type, shape)
        target = into() if into is not None else self._cache_space(weight.nbytes)
        if target is not None:
            target = target[:weight.nbytes]
            target[:] = weight.data
            weight = kernels.PackedWeight(weight.ggml_type, weight.in_features, weight.out_features, target)
        if self.packed_cache is not None:
            self.packed_cache.add(key, weight)
        # The packed copy is what runs now: drop the file's pages as we go, so load never holds both.
        source.release_pages()
        return PackedLinear(weight)

    def _cache_space(self, nbytes: int) -> np.ndarray | None:
        """Aligned room for packed bytes in the packed cache file being written: its pages are the file's, which the
        kernel can write back and drop, not the process's. None without a cache file (then they stay in memory)."""
        return self.packed_cache.reserve(nbytes) if self.packed_cache is not None else None

    def embedding(self, source: WeightSource, name: str, vocab_size: int, width: int) -> QuantizedEmbedding:
        """Rows dequantized as tokens ask for them: the table stays in its block format."""
        return QuantizedEmbedding(source.raw(name), source.info(name, (vocab_size, width)))

    def finish(self, source: WeightSource) -> None:
        """Write the packed cache if this load had to pack any weight."""
        if self.packed_cache is not None:
            self.packed_cache.save()
