"""GGUF files of real models' shapes with random weights, written by our GGUF writer in seconds: for speed and
memory, never for text quality.

    python benchmarks/synthetic_models.py olmoe-1b-7b q4_0 /tmp/moe-files/olmoe-q4_0.gguf
    python benchmarks/synthetic_models.py llama-3-8b q4_k_m /tmp/dense-files/llama-3-8b-q4_k_m.gguf

Each quantized tensor is random bytes with every block's f16 scales set to small finite values, so the kernels see
ordinary numbers; norms are ones, routers and biases small normals (F32). Tensor types follow llama-quantize's
rules for the file type: q4_0 files keep the output projection in Q6_K; q4_k_m files also take Q6_K for attn_v and
ffn_down (experts included) in llama.cpp's "more bits" layers, and a matrix whose rows do not fit 256-value blocks
falls back as llama-quantize does (Q4_K -> Q5_0, Q6_K -> Q8_0: Qwen1.5-MoE's 1408-wide experts). A shape with
tied embeddings (Llama 3.2) has no output.weight, and its token_embd takes the output projection's type. The tokenizer is
the default model's (SmolLM2, 49,152 tokens) padded with unused tokens to the shape's vocabulary size.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeproots.convert import QUANTIZATION_VERSION, tensor_type
from deeproots.formats.gguf import GGUFFile, GGUFValueType
from deeproots.formats.gguf_writer import GGUFWriter
from deeproots.quant import GGMLType
from deeproots.quant.types import BLOCK_GEOMETRY
from deeproots.store import DEFAULT_MODEL, ModelStore


@dataclass(frozen=True)
class ModelShape:
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    norm_eps: float
    n_kv_heads: int | None = None  # grouped-query attention; None: as many as n_heads
    ffn: int | None = None  # a dense MLP's width (the dense shapes have no experts)
    n_experts: int = 0
    experts_per_token: int = 0
    expert_ffn: int = 0
    tied_embeddings: bool = False
    shared_ffn: int | None = None  # Qwen 2 MoE's shared expert
    qkv_bias: bool = False
    qk_norm_width: int | None = None  # OLMoE's q/k norms over all heads


SHAPES = {
    # meta-llama's config.json of each
    "llama-3.2-1b": ModelShape("llama", n_layers=16, d_model=2048, n_heads=32, head_dim=64, vocab_size=128256,
                               context_length=8192, rope_theta=500000.0, norm_eps=1e-5, n_kv_heads=8, ffn=8192,
                               tied_embeddings=True),
    "llama-3.2-3b": ModelShape("llama", n_layers=28, d_model=3072, n_heads=24, head_dim=128, vocab_size=128256,
                               context_length=8192, rope_theta=500000.0, norm_eps=1e-5, n_kv_heads=8, ffn=8192,
                               tied_embeddings=True),
    "llama-3-8b": ModelShape("llama", n_layers=32, d_model=4096, n_heads=32, head_dim=128, vocab_size=128256,
                             context_length=8192, rope_theta=500000.0, norm_eps=1e-5, n_kv_heads=8, ffn=14336),
    # allenai/OLMoE-1B-7B-0924's config.json
    "olmoe-1b-7b": ModelShape("olmoe", n_layers=16, d_model=2048, n_heads=16, head_dim=128, vocab_size=50304,
                              context_length=4096, rope_theta=10000.0, norm_eps=1e-5, n_experts=64,
                              experts_per_token=8, expert_ffn=1024, qk_norm_width=2048),
    # Qwen/Qwen1.5-MoE-A2.7B's config.json
    "qwen1.5-moe-a2.7b": ModelShape("qwen2moe", n_layers=24, d_model=2048, n_heads=16, head_dim=128,
                                    vocab_size=151936, context_length=8192, rope_theta=1e6, norm_eps=1e-6,
                                    n_experts=60, experts_per_token=4, expert_ffn=1408, shared_ffn=5632,
                                    qkv_bias=True),
}
# file type -> (the type of most matrices, llama.cpp's general.file_type: LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {"q4_0": ("q4_0", 2), "q4_k_m": ("q4_k", 15), "q5_k_m": ("q5_k", 17), "q6_k": ("q6_k", 18),
              "q8_0": ("q8_0", 7)}
# where each type's f16 scales sit in its block (ggml's block structs)
SCALE_OFFSETS = {GGMLType.Q4_0: (0,), GGMLType.Q4_1: (0, 2), GGMLType.Q5_0: (0,), GGMLType.Q8_0: (0,), GGMLType.Q4_K: (0, 2),
                 GGMLType.Q5_K: (0, 2), GGMLType.Q6_K: (208,)}
SCALE = np.array([0.01], np.float16).view(np.uint8)  # (2,) the bytes of one f16 scale


def random_blocks(rng: np.random.Generator, ggml_type: GGMLType, n_values: int) -> np.ndarray:
    """Random blocks of `ggml_type` whose f16 scales are 0.01: (bytes of n_values,) uint8."""
    geometry = BLOCK_GEOMETRY[ggml_type]
    blocks = np.frombuffer(bytearray(rng.bytes(n_values // geometry.block_size * geometry.type_size)), np.uint8)
    blocks = blocks.reshape(-1, geometry.type_size)  # (n_blocks, type_size)
    for offset in SCALE_OFFSETS[ggml_type]:
        blocks[:, offset:offset + 2] = SCALE
    return blocks.reshape(-1)


def more_bits(layer: int | None, n_layers: int) -> bool:
    """llama-quantize's use_more_bits: the layers whose attn_v and ffn_down a q4_k_m or q5_k_m file keeps in Q6_K."""
    if layer is None:
        return False
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def matrix_type(name: str, layer: int | None, gguf_shape: tuple[int, ...], n_layers: int,
                file_type: str, tied: bool = False) -> GGMLType:
    """convert's type for the matrix (the output projection in Q6_K, fallbacks for rows that do not fit), with
    q4_k_m's and q5_k_m's Q6_K layers."""
    target = FILE_TYPES[file_type][0]
    more_bits_names = ("attn_v", "ffn_down", "ffn_down_exps")
    if file_type in ("q4_k_m", "q5_k_m") and name in more_bits_names and more_bits(layer, n_layers):
        target = "q6_k"
    output = name == "output" or (name == "token_embd" and tied)
    if output:  # llama-quantize keeps the output projection in Q6_K (Q8_0 in a q8_0 file)
        target = "q8_0" if target == "q8_0" else "q6_k"
    return tensor_type(target, gguf_shape, output=output)


def matrices(shape: ModelShape) -> list[tuple[str, int | None, tuple[int, ...]]]:
    """(name, layer or None, GGUF shape: row length first) of every matrix, in file order."""
    s = shape
    q_width, kv_width = s.n_heads * s.head_dim, (s.n_kv_heads or s.n_heads) * s.head_dim
    out = [("token_embd", None, (s.d_model, s.vocab_size))]
    for layer in range(s.n_layers):
        out += [("attn_q", layer, (s.d_model, q_width)), ("attn_k", layer, (s.d_model, kv_width)),
                ("attn_v", layer, (s.d_model, kv_width)), ("attn_output", layer, (q_width, s.d_model))]
        if s.n_experts:
            out += [("ffn_gate_exps", layer, (s.d_model, s.expert_ffn, s.n_experts)),
                    ("ffn_up_exps", layer, (s.d_model, s.expert_ffn, s.n_experts)),
                    ("ffn_down_exps", layer, (s.expert_ffn, s.d_model, s.n_experts))]
        else:
            out += [("ffn_gate", layer, (s.d_model, s.ffn)), ("ffn_up", layer, (s.d_model, s.ffn)),
                    ("ffn_down", layer, (s.ffn, s.d_model))]
        if s.shared_ffn is not None:
            out += [("ffn_gate_shexp", layer, (s.d_model, s.shared_ffn)),
                    ("ffn_up_shexp", layer, (s.d_model, s.shared_ffn)),
                    ("ffn_down_shexp", layer, (s.shared_ffn, s.d_model))]
    return out if s.tied_embeddings else out + [("output", None, (s.d_model, s.vocab_size))]


def vectors(shape: ModelShape) -> list[tuple[str, np.ndarray]]:
    """The F32 tensors: norms (ones), routers and biases (small normals)."""
    s, rng = shape, np.random.default_rng(1)
    out = [("output_norm.weight", np.ones(s.d_model, np.float32))]
    for layer in range(s.n_layers):
        blk = f"blk.{layer}."
        out += [(blk + "attn_norm.weight", np.ones(s.d_model, np.float32)),
                (blk + "ffn_norm.weight", np.ones(s.d_model, np.float32))]
        if s.n_experts:
            out.append((blk + "ffn_gate_inp.weight", rng.standard_normal((s.n_experts, s.d_model), np.float32) * 0.02))
        if s.qk_norm_width is not None:
            out += [(blk + f"attn_{x}_norm.weight", np.ones(s.qk_norm_width, np.float32)) for x in "qk"]
        if s.qkv_bias:
            out += [(blk + f"attn_{x}.bias", rng.standard_normal(s.n_heads * s.head_dim, np.float32) * 0.02)
                    for x in "qkv"]
        if s.shared_ffn is not None:
            out.append((blk + "ffn_gate_inp_shexp.weight", rng.standard_normal((1, s.d_model), np.float32) * 0.02))
    return out


def tokenizer_metadata(vocab_size: int) -> dict:
    """The default model's tokenizer keys, its vocabulary padded with unused tokens to vocab_size."""
    with GGUFFile.open(ModelStore().pull(DEFAULT_MODEL, quiet=True).path) as gguf:
        keys = {key: value for key, value in gguf.metadata.items() if key.startswith("tokenizer.")}
    tokens, types = list(keys["tokenizer.ggml.tokens"]), np.asarray(keys["tokenizer.ggml.token_type"], np.int32)
    padding = vocab_size - len(tokens)
    keys["tokenizer.ggml.tokens"] = tokens + [f"[PAD{i}]" for i in range(padding)]
    keys["tokenizer.ggml.token_type"] = np.concatenate([types, np.full(padding, 5, np.int32)])  # 5: unused
    return keys


def write_model(path: Path, shape_name: str, file_type: str) -> None:
    """The file of SHAPES[shape_name] in `file_type` (a FILE_TYPES key) at `path`; tensors are made while written."""
    s = SHAPES[shape_name]
    writer = GGUFWriter()
    arch = s.architecture
    writer.add("general.architecture", arch)
    writer.add("general.name", f"synthetic {shape_name} {file_type}")
    writer.add("general.file_type", FILE_TYPES[file_type][1], GGUFValueType.UINT32)
    writer.add("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32)
    hyperparameters = {"block_count": s.n_layers, "context_length": s.context_length, "embedding_length": s.d_model,
                       "feed_forward_length": s.ffn or s.shared_ffn or s.expert_ffn, "attention.head_count": s.n_heads,
                       "attention.head_count_kv": s.n_kv_heads or s.n_heads, "rope.freq_base": s.rope_theta,
                       "rope.dimension_count": s.head_dim, "attention.layer_norm_rms_epsilon": s.norm_eps,
                       "vocab_size": s.vocab_size}
    if s.n_experts:
        hyperparameters |= {"expert_count": s.n_experts, "expert_used_count": s.experts_per_token,
                            "expert_feed_forward_length": s.expert_ffn}
    for key, value in hyperparameters.items():
        writer.add(f"{arch}.{key}", value, GGUFValueType.UINT32 if isinstance(value, int) else None)
    if s.shared_ffn is not None:
        writer.add(f"{arch}.expert_shared_feed_forward_length", s.shared_ffn, GGUFValueType.UINT32)
    for key, value in tokenizer_metadata(s.vocab_size).items():
        writer.add(key, value)
    for name, values in vectors(s):
        writer.add_tensor(name, values, GGMLType.F32)
    for seed, (name, layer, gguf_shape) in enumerate(matrices(s)):
        ggml_type = matrix_type(name, layer, gguf_shape, s.n_layers, file_type, s.tied_embeddings)
        n_values = int(np.prod(gguf_shape))
        writer.add_tensor_later(f"blk.{layer}.{name}.weight" if layer is not None else f"{name}.weight", gguf_shape,
                                ggml_type, lambda seed=seed, t=ggml_type, n=n_values:
                                random_blocks(np.random.default_rng(seed), t, n))
    writer.write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("file_type", choices=list(FILE_TYPES))
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    write_model(args.output, args.shape, args.file_type)
    print(f"{args.output}: {args.output.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
