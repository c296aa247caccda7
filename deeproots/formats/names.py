"""Hugging Face checkpoint names -> llama.cpp's GGUF names, for tensors and per-architecture facts.

One table serves loading an HF folder and `deeproots convert`: both present the checkpoint exactly as
llama.cpp's convert_hf_to_gguf.py would write it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UnsupportedModelError


@dataclass(frozen=True)
class HFArchitecture:
    gguf_name: str  # llama.cpp's architecture name
    activation: str  # the hidden_act / hidden_activation the model class implements
    permute_qk: bool = False  # llama files reorder q/k rows so RoPE pairs adjacent dimensions
    norm_shift: float = 0.0  # Gemma's RMSNorm scales by (1 + w); GGUF stores 1 + w
    post_attention_norm: str = "ffn_norm"  # what HF's post_attention_layernorm is called in GGUF
    sliding_window: bool = False  # honours config.json's sliding_window


# config.json's model_type -> how to read it.
HF_ARCHITECTURES: dict[str, HFArchitecture] = {
    "llama": HFArchitecture("llama", "silu", permute_qk=True),
    "mistral": HFArchitecture("llama", "silu", permute_qk=True, sliding_window=True),
    "qwen2": HFArchitecture("qwen2", "silu"),
    "qwen3": HFArchitecture("qwen3", "silu"),
    "gemma3_text": HFArchitecture("gemma3", "gelu_pytorch_tanh", norm_shift=1.0,
                                  post_attention_norm="post_attention_norm", sliding_window=True),
    # mixtures of experts: llama.cpp writes Mixtral as a llama with expert tensors
    "mixtral": HFArchitecture("llama", "silu", permute_qk=True, sliding_window=True),
    "qwen2_moe": HFArchitecture("qwen2moe", "silu"),
    "qwen3_moe": HFArchitecture("qwen3moe", "silu"),
    "olmoe": HFArchitecture("olmoe", "silu"),
    # its hidden_act names no activation it uses: the experts' clamped SwiGLU is fixed (models/gpt_oss.py)
    "gpt_oss": HFArchitecture("gpt-oss", "silu", post_attention_norm="post_attention_norm", sliding_window=True),
}

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# HF name inside model.layers.N. -> GGUF name inside blk.N.
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",  # Mixtral's router
    "mlp.gate.weight": "ffn_gate_inp.weight",  # Qwen MoE's and OLMoE's router
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    # gpt-oss
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.sinks": "attn_sinks.weight",
    "mlp.router.weight": "ffn_gate_inp.weight",
    "mlp.router.bias": "ffn_gate_inp.bias",
    "mlp.experts.down_proj_bias": "ffn_down_exps.bias",
}
# One expert's matrix inside model.layers.N. -> the GGUF 3-d tensor (experts, rows, row length) it is a slice of.
EXPERT_TENSORS = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps",  # Mixtral
                  "gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
_EXPERT_NAME = re.compile(r"model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(\w+)\.weight")


@dataclass(frozen=True)
class FusedExpertPart:
    """One GGUF tensor cut from a checkpoint tensor holding all the experts at once (gpt-oss's GptOssExperts)."""
    gguf_name: str  # inside blk.N.
    interleaved: int | None  # gate (0) or up (1): every other column of the last dimension; None: all of it
    transpose: bool  # HF stores (experts, in, out): llama.cpp's 3-d tensors are (experts, out, in)


# HF name inside model.layers.N. -> the GGUF tensors llama.cpp's converter makes of it.
FUSED_EXPERT_TENSORS = {
    "mlp.experts.gate_up_proj": (FusedExpertPart("ffn_gate_exps.weight", 0, True),
                                 FusedExpertPart("ffn_up_exps.weight", 1, True)),
    "mlp.experts.gate_up_proj_bias": (FusedExpertPart("ffn_gate_exps.bias", 0, False),
                                      FusedExpertPart("ffn_up_exps.bias", 1, False)),
    "mlp.experts.down_proj": (FusedExpertPart("ffn_down_exps.weight", None, True),),
}
# Gemma 3 attends globally on layers 5, 11, 17, ... (llama.cpp's swa pattern; GGUF files carry no key for it).
GEMMA3_GLOBAL_LAYER_EVERY = 6
# gpt-oss's clamped SwiGLU (llama.cpp's constants; GGUF files have no key for them, config.json may state them).
GPT_OSS_SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT = 1.702, 7.0
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


def hf_architecture(model_type: object) -> HFArchitecture:
    spec = HF_ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if spec is None:
        raise UnsupportedModelError(f"config.json model_type {model_type!r} is not supported; supported: "
                                    f"{', '.join(sorted(HF_ARCHITECTURES))}")
    return spec


def expert_slice(hf_name: str) -> tuple[str, int] | None:
    """(GGUF 3-d tensor name, expert index) of one expert's matrix, or None for any other tensor."""
    match = _EXPERT_NAME.fullmatch(hf_name)
    if match is None or match[3] not in EXPERT_TENSORS:
        return None
    return f"blk.{match[1]}.{EXPERT_TENSORS[match[3]]}.weight", int(match[2])


# gpt-oss's released checkpoints store those matrices as MXFP4: NAME_blocks (experts, out, in / 32, 16) bytes of e2m1
# codes and NAME_scales (experts, out, in / 32) E8M0 exponents, already (experts, out, in).
MXFP4_SUFFIXES = ("_blocks", "_scales")


def fused_expert_parts(hf_name: str) -> tuple[int, tuple[FusedExpertPart, ...]] | None:
    """(layer, the parts) of a checkpoint tensor holding all of a layer's experts, or None for any other tensor."""
    match = _LAYER_NAME.fullmatch(hf_name)
    if match is None or match[2] not in FUSED_EXPERT_TENSORS:
        return None
    return int(match[1]), FUSED_EXPERT_TENSORS[match[2]]


def mxfp4_expert_half(hf_name: str) -> tuple[str, str] | None:
    """(the matrix's HF name, "_blocks" or "_scales") of one half of an MXFP4 expert matrix, or None."""
    for suffix in MXFP4_SUFFIXES:
        if hf_name.endswith(suffix) and fused_expert_parts(hf_name[:-len(suffix)]) is not None:
            return hf_name[:-len(suffix)], suffix
    return None


def gguf_tensor_name(hf_name: str, spec: HFArchitecture) -> str:
    """The GGUF name of checkpoint tensor `hf_name`; an unknown tensor is an UnsupportedModelError."""
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    match = _LAYER_NAME.fullmatch(hf_name)
    if match:
        index, inner = match.groups()
        if inner == "post_attention_layernorm.weight":
            return f"blk.{index}.{spec.post_attention_norm}.weight"
        if inner in LAYER_TENSORS:
            return f"blk.{index}.{LAYER_TENSORS[inner]}"
    raise UnsupportedModelError(f"checkpoint tensor {hf_name!r} has no place in a {spec.gguf_name} model")
