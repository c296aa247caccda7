"""The CUDA backend: activations, weights and the KV cache are torch tensors on a device; Triton kernels run them.

Matrices stay in their GGUF block bytes on the device (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K; Q5_0 widened to Q8_0),
uploaded once, and the fused dequantize + product kernels (kernels/triton/linear.py) read them there; F16/BF16/F32
matrices stay as they are and go through torch; other types are dequantized to float32 (exact) at load. RMSNorm,
RoPE, SiLU/GELU gating and decode attention are Triton kernels; prefill attention is PyTorch's SDPA.

The backend takes a torch device: "cuda" on a GPU, or "cpu", where the same kernels run under Triton's
interpreter (TRITON_INTERPRET=1): that is how CI tests this file without a GPU. Mixtures of experts: cuda_moe.py
(gpt-oss's are refused by name).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..cache.device_kv import DeviceKVCache, dequantize_q8_0
from ..cache.kv import KVCache, KVLayout
from ..device import require_gpu
from ..errors import DeviceError, RequestError
from ..formats.gguf import TensorInfo
from ..kernels.triton.attention import decode_attention
from ..kernels.triton.gating import gated
from ..kernels.triton.linear import quantized_linear
from ..kernels.triton.norm import rms_norm
from ..kernels.triton.rope import rotate_ as rope_rotate_
from ..quant import GGMLType
from ..quant.legacy import q5_0_as_q8_0
from .base import Backend, Linear, Primitives, WeightSource
from .cuda_graphs import DecodeGraphs
from .cuda_moe import BlockExperts, FloatExperts, device_mixture_class, device_route
from .device_memory import DEVICE_BLOCK_TYPES, device_type, device_weight_bytes
from .formulas import RotaryEmbedding, combine_experts
from .linears import QuantizedEmbedding

FLOAT_DTYPES = {GGMLType.F32: torch.float32, GGMLType.F16: torch.float16, GGMLType.BF16: torch.bfloat16}


def device_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A copy of a host array (a read-only map of the file is fine: it is copied, never written) on `device`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that it cannot write a read-only array
        return torch.from_numpy(np.ascontiguousarray(array)).to(device, copy=True)


class BlockLinear:
    """y = x @ W.T with W's block bytes on the device, by the fused Triton kernels."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, in_features: int, out_features: int):
        self.raw, self.ggml_type, self.in_features, self.out_features = raw, ggml_type, in_features, out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return quantized_linear(x, self.raw, self.ggml_type, self.in_features, self.out_features)  # (T, out)


class FloatLinear:
    """y = x @ W.T with W (out_features, in_features) in its float type on the device; float32 out."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight).float()


class SideBySide:
    """Several products of one input whose weights cannot share a kernel (types differ), outputs side by side."""

    def __init__(self, parts: list[Linear]):
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


class DeviceEmbedding:
    """The token table stays in host memory in its block format; the rows a step asks for go to the device."""

    def __init__(self, table: QuantizedEmbedding, device: torch.device):
        self.table, self.device = table, device

    def __getitem__(self, tokens: np.ndarray) -> torch.Tensor:
        return device_tensor(self.table[tokens], self.device)  # (T, width) float32


class DevicePrimitives:
    """The primitives over device tensors. RoPE's cos/sin tables are uploaded once per RotaryEmbedding; a step's
    positions (every packed row's) are one device tensor, made once per step and read by every layer's kernels."""

    def __init__(self, device: torch.device):
        self.device = device
        self.tables: dict[int, tuple[RotaryEmbedding, torch.Tensor, torch.Tensor]] = {}
        self.step: tuple[tuple, torch.Tensor] | None = None  # (the step's key, its positions (N,) on the device)

    def _tables(self, rope: RotaryEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        if id(rope) not in self.tables:  # the rope is kept with its tables, so its id is not reused
            self.tables[id(rope)] = rope, device_tensor(rope.cos, self.device), device_tensor(rope.sin, self.device)
        return self.tables[id(rope)][1:]

    def rotate_(self, rope: RotaryEmbedding, x: torch.Tensor, start: int) -> None:
        """Rotate x (T, heads, head_dim), a view, in place; row t holds position start + t."""
        positions = torch.arange(start, start + x.shape[0], device=self.device)
        rope_rotate_(x, *self._tables(rope), positions, rope.rope_dim, rope.style == "interleaved")

    def positions(self, caches, lengths) -> torch.Tensor:
        """(N,) int64 on the device: each packed row's position, the same tensor for every layer of the step (the
        caches advance after the last layer). CUDA graphs (cuda_graphs.py) set it to their static buffer."""
        key = tuple((id(cache), cache.offset, T) for cache, T in zip(caches, lengths))
        if self.step is None or self.step[0] != key:
            rows = np.concatenate([np.arange(cache.offset, cache.offset + T) for cache, T in zip(caches, lengths)])
            self.step = key, device_tensor(rows.astype(np.int64), self.device)
        return self.step[1]

    def attend_sequences(self, rope: RotaryEmbedding, qkv: torch.Tensor, n_heads: int, caches, lengths,
                         layer: int, scale: float, window: int | None, sinks=None) -> torch.Tensor:
        """base.Primitives.attend_sequences: RoPE over every row in one launch; then per sequence, a decoding one
        (one row) writes its cache and attends at device positions, a longer one updates and runs SDPA. Sinks
        (gpt-oss's) are not run here: gpt-oss is refused at load."""
        n_kv = (qkv.shape[1] - n_heads) // 2
        positions = self.positions(caches, lengths)  # (N,)
        rope_rotate_(qkv[:, :n_heads + n_kv], *self._tables(rope), positions, rope.rope_dim,
                     rope.style == "interleaved")
        outputs, start = [], 0
        for cache, T in zip(caches, lengths):
            rows = qkv[start:start + T]
            q = rows[:, :n_heads].transpose(0, 1)  # (n_heads, T, head_dim)
            keys = rows[:, n_heads:n_heads + n_kv].transpose(0, 1)  # (n_kv_heads, T, head_dim)
            values = rows[:, n_heads + n_kv:].transpose(0, 1)
            if T == 1:
                if cache.room() < 1:
                    raise RequestError(f"the KV cache holds {cache.max_tokens} tokens; this step needs one more")
                position = positions[start:start + 1]  # (1,)
                cache.write_at(layer, position, keys, values)
                outputs.append(decode_attention(q, cache.keys[layer], cache.values[layer], scale, window,
                                                length=position + 1))
            else:
                outputs.append(attention(q, *cache.update(layer, keys, values), scale, window))
            start += T
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def primitives(self) -> Primitives:
        return Primitives(rms_norm=rms_norm, rotate_=self.rotate_, attention=attention, silu_mul=silu_mul,
                          gelu_mul=gelu_mul, attend_sequences=self.attend_sequences, route=device_route,
                          combine_experts=combine_experts)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              window: int | None = None) -> torch.Tensor:
    """formulas.causal_attention over device tensors: the Triton kernel for one query, SDPA for several."""
    if q.shape[1] == 1:
        return decode_attention(q, k, v, scale, window)
    n_heads, T, _ = q.shape
    L, group = k.shape[1], n_heads // k.shape[0]
    if k.dtype == torch.uint8:  # q8_0 rows
        k, v = dequantize_q8_0(k), dequantize_q8_0(v)
    k = k.float().repeat_interleave(group, dim=0)  # (n_heads, L, head_dim)
    v = v.float().repeat_interleave(group, dim=0)
    positions = torch.arange(L - T, L, device=q.device)[:, None]  # (T, 1) the queries' absolute positions
    keys = torch.arange(L, device=q.device)[None, :]  # (1, L)
    visible = keys <= positions
    if window:
        visible &= keys > positions - window
    attended = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=visible, scale=scale)[0]
    return attended.transpose(0, 1).reshape(T, -1)  # (T, n_heads * head_dim)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    return gated(gate_up, gelu=False)


def gelu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    return gated(gate_up, gelu=True)


def _block_bytes(source: WeightSource, names: list[str], ggml_type: int) -> list[np.ndarray]:
    """The named tensors' stored bytes in the block format the kernels read (Q5_0 widened to Q8_0, lossless)."""
    raw = [source.raw(name) for name in names]
    return [q5_0_as_q8_0(part) for part in raw] if ggml_type == GGMLType.Q5_0 else raw


class CUDABackend(Backend):
    name = "cuda"
    default_kv_type = "f16"

    def __init__(self, device: str = "cuda"):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            require_gpu()
        device_primitives = DevicePrimitives(self.device)
        self.primitives = device_primitives.primitives()
        self.graphs = DecodeGraphs(device_primitives, self.device)  # used on a CUDA device only

    def from_host(self, array: np.ndarray) -> torch.Tensor:
        return device_tensor(array, self.device)

    def to_host(self, array: torch.Tensor) -> np.ndarray:
        return array.float().cpu().numpy()

    def decode_step(self, net, tokens: np.ndarray, caches) -> np.ndarray | None:
        return self.graphs.run(net, tokens, caches)

    def check_memory(self, tensors: list[TensorInfo], kv_bytes: int) -> None:
        """Refuse a load whose weights (as device_memory.py counts them) and cache would not fit in the device's
        free memory."""
        if self.device.type != "cuda":
            return
        nbytes = device_weight_bytes(tensors) + kv_bytes
        free, total = torch.cuda.mem_get_info(self.device)
        if nbytes > free:
            raise DeviceError(f"the model needs {nbytes / 2**30:.2f} GiB of device memory; {self.device} has "
                              f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB (a smaller --ctx or type helps)")

    def linear(self, source: WeightSource, names: list[str], in_features: int, out_features: list[int]) -> Linear:
        """Matrices of one type are stacked into one weight (GGUF stores a matrix row after row); mixed types run
        side by side."""
        infos = [source.info(name, (rows, in_features)) for name, rows in zip(names, out_features)]
        types = {device_type(info.ggml_type) for info in infos}
        if len(types) > 1:
            return SideBySide([self.linear(source, [name], in_features, [rows])
                               for name, rows in zip(names, out_features)])
        placed = types.pop()
        if placed in DEVICE_BLOCK_TYPES:
            raw = _block_bytes(source, names, infos[0].ggml_type)
            weight = self.from_host(np.concatenate([part.reshape(-1).view(np.uint8) for part in raw]))
            source.release_pages()
            return BlockLinear(weight, placed, in_features, sum(out_features))
        matrices = [self._float_matrix(source, name, info, rows, in_features)
                    for name, info, rows in zip(names, infos, out_features)]
        return FloatLinear(torch.cat(matrices) if len(matrices) > 1 else matrices[0])

    def _float_matrix(self, source: WeightSource, name: str, info: TensorInfo, rows: int,
                      in_features: int) -> torch.Tensor:
        """(rows, in_features) on the device: F32/F16/BF16 in their own type from the file's bytes, any other type
        dequantized to float32."""
        if info.ggml_type not in FLOAT_DTYPES:
            return self.from_host(source.tensor(name, (rows, in_features)))
        raw = source.raw(name).reshape(-1).view(np.uint8)
        return self.from_host(raw).view(FLOAT_DTYPES[info.ggml_type]).reshape(rows, in_features)

    def expert_linears(self, source: WeightSource, names: list[str], n_experts: int, in_features: int,
                       out_features: list[int]) -> BlockExperts:
        """Expert e's matrices are slice e of each 3-d tensor's bytes (GGUF stores experts one after another):
        uploaded once as (n_experts, that expert's matrices stacked), so an expert's product reads a view of it."""
        infos = [source.info(name, (n_experts, rows, in_features)) for name, rows in zip(names, out_features)]
        types = {info.ggml_type for info in infos}
        placed = device_type(infos[0].ggml_type)
        if len(types) == 1 and placed in DEVICE_BLOCK_TYPES:
            raw = _block_bytes(source, names, infos[0].ggml_type)
            stacked = np.concatenate([part.reshape(n_experts, -1).view(np.uint8) for part in raw], axis=1)
            weights = self.from_host(stacked)  # (n_experts, bytes of one expert)
            source.release_pages()
            return BlockExperts(weights, placed, in_features, sum(out_features))
        parts = [source.tensor(name, (n_experts, rows, in_features)) for name, rows in zip(names, out_features)]
        return FloatExperts(self.from_host(np.concatenate(parts, axis=1)))  # (n_experts, out, in) float32

    def mixture_class(self, moe_class: type) -> type:
        return device_mixture_class(moe_class)

    def embedding(self, source: WeightSource, name: str, vocab_size: int, width: int) -> DeviceEmbedding:
        return DeviceEmbedding(QuantizedEmbedding(source.raw(name), source.info(name, (vocab_size, width))),
                               self.device)

    def kv_cache(self, layout: KVLayout, max_tokens: int, kv_type: str | None = None) -> KVCache:
        return DeviceKVCache(*layout, max_tokens, kv_type or self.default_kv_type, self.device)

