"""A Hugging Face model folder seen as a GGUF file: llama.cpp's metadata keys and tensor names.

config.json becomes `{arch}.*` metadata, tokenizer.json `tokenizer.ggml.*` metadata
(tokenizer/hf_folder.py), and the safetensors tensors are renamed (formats/names.py) with the
conversions llama.cpp's converter makes: llama q/k rows permuted for its RoPE layout, Gemma's norm
weights stored as 1 + w. The model loader and `deeproots convert` read this exactly like a GGUFFile:
`metadata`, `tensors` (TensorInfo in GGUF order), `tensor_data(name)` (raw little-endian bytes).
Untouched tensors stay zero-copy views of the memory-mapped files.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError, TensorNotFoundError, UnsupportedModelError
from ..quant import dequantize
from ..quant.types import GGMLType, tensor_nbytes
from .gguf import TensorInfo
from .names import (GEMMA3_GLOBAL_LAYER_EVERY, GPT_OSS_SWIGLU_ALPHA, GPT_OSS_SWIGLU_LIMIT, MXFP4_SUFFIXES,
                    FusedExpertPart, HFArchitecture, expert_slice, fused_expert_parts, gguf_tensor_name,
                    hf_architecture, mxfp4_expert_half)
from .safetensors import SafetensorsFile, SafetensorsTensorInfo, open_checkpoint

CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 10_000_000
GGML_TYPES = {"F32": GGMLType.F32, "F16": GGMLType.F16, "BF16": GGMLType.BF16}  # safetensors dtype -> GGML
_SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn")  # yarn: gpt-oss only (the family tested with it)
_GPT_OSS_SWIGLU = {"swiglu_alpha": GPT_OSS_SWIGLU_ALPHA, "swiglu_limit": GPT_OSS_SWIGLU_LIMIT}  # config.json keys


def read_json(path: str, max_bytes: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A JSON object from `path`, with typed errors naming the file."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise ModelNotFoundError(f"{name} is missing from {os.path.dirname(path)!r}") from None
    if len(raw) > max_bytes:
        raise ModelFormatError(f"{name} exceeds {max_bytes} bytes", field=name)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{name} is not valid JSON: {error}", field=name) from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"{name} must hold a JSON object", field=name)
    return value


def _number(config: dict[str, Any], key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFormatError(f"config.json {key!r} must be a number, got {value!r}", field=key)
    return value


def _rope_parameters(config: dict[str, Any], layer_type: str) -> dict[str, Any]:
    """RoPE settings of one layer type, from transformers 5's rope_parameters or the older top-level keys."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict) and isinstance(parameters.get(layer_type), dict):
        return parameters[layer_type]  # Gemma 3: one entry per layer type
    if isinstance(parameters, dict):
        return parameters
    legacy = dict(config.get("rope_scaling") or {})
    legacy.setdefault("rope_type", legacy.pop("type", "default"))
    theta_key = "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
    legacy["rope_theta"] = config.get(theta_key, 10000.0)
    return legacy


def _rope_metadata(config: dict[str, Any], arch: str, head_dim: int) -> dict[str, Any]:
    rope = _rope_parameters(config, "full_attention")
    rope_type = rope.get("rope_type", "default")
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(f"RoPE type {rope_type!r} is not supported; supported: "
                                    f"{', '.join(_SUPPORTED_ROPE_TYPES)}")
    metadata = {
        f"{arch}.rope.freq_base": float(_number(rope, "rope_theta", 10000.0)),
        f"{arch}.rope.dimension_count": int(head_dim * _number(config, "partial_rotary_factor", 1.0)),
    }
    if rope_type == "linear":
        metadata[f"{arch}.rope.scaling.type"] = "linear"
        metadata[f"{arch}.rope.scaling.factor"] = float(_number(rope, "factor"))
    if rope_type == "yarn":
        metadata.update(_yarn_metadata(rope, arch))
    return metadata


def _yarn_metadata(rope: dict[str, Any], arch: str) -> dict[str, Any]:
    """llama.cpp's `rope.scaling.*` keys of YaRN, for the family whose YaRN we compute as transformers does."""
    if arch != "gpt-oss":
        raise UnsupportedModelError(f"RoPE type 'yarn' is supported for gpt-oss only, not {arch}")
    if rope.get("truncate", True) is not False:  # transformers' default; gpt-oss's configs set false
        raise UnsupportedModelError("gpt-oss's YaRN with truncate true is not supported (its configs say false)")
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        if rope.get(key) is not None:
            raise UnsupportedModelError(f"YaRN's {key} is not supported")
    metadata = {f"{arch}.rope.scaling.type": "yarn", f"{arch}.rope.scaling.factor": float(_number(rope, "factor")),
                f"{arch}.rope.scaling.original_context_length": int(_number(rope, "original_max_position_embeddings"))}
    for key in ("beta_fast", "beta_slow"):
        if rope.get(key) is not None:
            metadata[f"{arch}.rope.scaling.yarn_{key}"] = float(_number(rope, key))
    return metadata


def _check_layer_pattern(config: dict[str, Any], every: int, family: str) -> None:
    """The sliding/global layer order must be the one the model class builds: one global layer every `every`."""
    layer_types = config.get("layer_types")
    if layer_types is None:
        return
    expected = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(len(layer_types))]
    if layer_types != expected:
        raise UnsupportedModelError(f"layer_types {layer_types} differ from {family}'s pattern of one global "
                                    f"layer every {every}")


def _model_metadata(config: dict[str, Any], spec: HFArchitecture, name: str) -> dict[str, Any]:
    """The `general.*` and `{arch}.*` keys llama.cpp's converter writes for this config."""
    arch = spec.gguf_name
    activation = config.get("hidden_act", config.get("hidden_activation"))
    if activation != spec.activation:
        raise UnsupportedModelError(f"hidden activation {activation!r} is not supported for "
                                    f"{config['model_type']} (expected {spec.activation!r})")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(key) is not None:
            raise UnsupportedModelError(f"config.json {key} is not supported")
    n_heads = int(_number(config, "num_attention_heads"))
    head_dim = int(config.get("head_dim") or _number(config, "hidden_size") // n_heads)
    metadata: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": name,
        f"{arch}.context_length": int(_number(config, "max_position_embeddings")),
        f"{arch}.embedding_length": int(_number(config, "hidden_size")),
        f"{arch}.block_count": int(_number(config, "num_hidden_layers")),
        f"{arch}.feed_forward_length": int(_number(config, "intermediate_size")),
        f"{arch}.attention.head_count": n_heads,
        f"{arch}.attention.head_count_kv": int(_number(config, "num_key_value_heads", n_heads)),
        f"{arch}.attention.key_length": head_dim,
        f"{arch}.attention.value_length": head_dim,
        f"{arch}.attention.layer_norm_rms_epsilon": float(_number(config, "rms_norm_eps")),
        f"{arch}.vocab_size": int(_number(config, "vocab_size")),
        **_rope_metadata(config, arch, head_dim),
    }
    if config.get("use_sliding_window"):
        raise UnsupportedModelError("Qwen's use_sliding_window (windows on some layers only) is not supported")
    if spec.sliding_window and config.get("sliding_window") is not None:
        metadata[f"{arch}.attention.sliding_window"] = int(_number(config, "sliding_window"))
    metadata.update(_expert_metadata(config, arch))
    if arch == "gpt-oss":
        _check_layer_pattern(config, 2, "gpt-oss")
        for key, value in _GPT_OSS_SWIGLU.items():
            if config.get(key, value) != value:
                raise UnsupportedModelError(f"config.json {key} {config[key]!r} is not supported (only {value})")
        metadata[f"{arch}.expert_feed_forward_length"] = metadata[f"{arch}.feed_forward_length"]
    if arch == "gemma3":
        _check_layer_pattern(config, GEMMA3_GLOBAL_LAYER_EVERY, "Gemma 3")
        local_rope = _rope_parameters(config, "sliding_attention")
        metadata[f"{arch}.rope.freq_base_swa"] = float(_number(local_rope, "rope_theta", 10000.0))
        scalar = _number(config, "query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            metadata[f"{arch}.attention.scale"] = float(scalar) ** -0.5
    return metadata


def _expert_metadata(config: dict[str, Any], arch: str) -> dict[str, Any]:
    """The `{arch}.expert_*` keys of a mixture of experts (none for a dense model), as llama.cpp's converter writes
    them, plus `expert_weights_norm` from HF's norm_topk_prob where the config has one."""
    count_key = next((key for key in ("num_local_experts", "num_experts") if config.get(key) is not None), None)
    if count_key is None:
        return {}
    for key, dense in (("decoder_sparse_step", 1), ("mlp_only_layers", []), ("clip_qkv", None)):
        if config.get(key, dense) != dense:
            raise UnsupportedModelError(f"config.json {key} {config[key]!r} is not supported (only {dense!r})")
    metadata = {f"{arch}.expert_count": int(_number(config, count_key)),
                f"{arch}.expert_used_count": int(_number(config, "num_experts_per_tok"))}
    for hf_key, gguf_key in (("moe_intermediate_size", "expert_feed_forward_length"),
                             ("shared_expert_intermediate_size", "expert_shared_feed_forward_length")):
        if config.get(hf_key) is not None:
            metadata[f"{arch}.{gguf_key}"] = int(_number(config, hf_key))
    if config.get("norm_topk_prob") is not None:
        metadata[f"{arch}.expert_weights_norm"] = bool(config["norm_topk_prob"])
    return metadata


def _permute_for_rope(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's half-split q/k rows -> llama.cpp's interleaved order, per head: (rows, bytes per row) -> same shape."""
    shape = rows.shape
    return rows.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


class HFCheckpoint:
    """An HF folder behind the GGUFFile interface the loader and the converter use."""

    def __init__(self, path: str, metadata: dict[str, Any],
                 sources: dict[str, tuple[Callable[[], np.ndarray], TensorInfo]], files: list[SafetensorsFile]):
        self.path = path
        self.metadata = metadata
        # GGUF name -> the tensor in its final form, computed only when asked for
        self._sources = {name: source for name, (source, _) in sources.items()}
        self.tensors = {name: info for name, (_, info) in sources.items()}
        self._files = files

    @classmethod
    def open(cls, folder: str | os.PathLike,
             tokenizer_metadata: Callable[[str], dict[str, Any]]) -> HFCheckpoint:
        """`tokenizer_metadata(folder)`: the folder's tokenizer as GGUF keys (model_file.open_hf_folder passes
        tokenizer/'s reader), read once config.json has been."""
        folder = os.fspath(folder)
        config = read_json(os.path.join(folder, CONFIG_FILE))
        spec = hf_architecture(config.get("model_type"))
        metadata = {**_model_metadata(config, spec, os.path.basename(os.path.abspath(folder))),
                    **tokenizer_metadata(folder)}
        checkpoint = open_checkpoint(folder)
        files = list({id(file): file for file, _ in checkpoint.values()}.values())
        try:
            sources = _tensor_sources(checkpoint, config, spec)
            return cls(folder, metadata, sources, files)
        except BaseException:
            for file in files:
                file.close()
            raise

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8, little-endian, row-major) in the dtype `tensors[name]` names."""
        if name not in self._sources:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.path}")
        return np.ascontiguousarray(self._sources[name]()).view(np.uint8).reshape(-1)

    def release_pages(self) -> None:
        """Nothing to do: the safetensors maps are private and fault pages in as read."""

    def close(self) -> None:
        for file in self._files:
            file.close()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _tensor_sources(checkpoint: dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]], config: dict[str, Any],
                    spec: HFArchitecture) -> dict[str, tuple[Callable[[], np.ndarray], TensorInfo]]:
    """GGUF name -> (a function giving the tensor as llama.cpp's converter would store it, its TensorInfo)."""
    n_heads = int(_number(config, "num_attention_heads"))
    n_kv_heads = int(_number(config, "num_key_value_heads", n_heads))
    tied = bool(config.get("tie_word_embeddings", False))
    sources: dict[str, tuple[Callable[[], np.ndarray], TensorInfo]] = {}
    experts: dict[str, dict[int, str]] = {}  # GGUF 3-d tensor -> expert index -> HF name of its slice
    mxfp4: dict[str, dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]]] = {}  # matrix -> its two halves
    for hf_name, (file, file_info) in checkpoint.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue  # recomputed buffers; a tied head is the embedding table
        sliced = expert_slice(hf_name)
        if sliced is not None:
            experts.setdefault(sliced[0], {})[sliced[1]] = hf_name
            continue
        half = mxfp4_expert_half(hf_name)
        if half is not None:
            mxfp4.setdefault(half[0], {})[half[1]] = file, file_info
            continue
        fused = fused_expert_parts(hf_name)
        if fused is not None:
            layer, parts = fused
            for part in parts:
                name = f"blk.{layer}.{part.gguf_name}"
                sources[name] = _fused_expert_part(file, hf_name, file_info, part, name)
            continue
        name = gguf_tensor_name(hf_name, spec)


        def load(file: SafetensorsFile = file, hf_name: str = hf_name) -> np.ndarray:
            return file.tensor_bytes(hf_name)  # (nbytes,) uint8, as stored

        ggml_type = GGML_TYPES.get(file_info.dtype)
        if ggml_type is None:
            raise UnsupportedModelError(f"tensor {hf_name!r} has dtype {file_info.dtype}; supported: "
                                        f"{', '.join(GGML_TYPES)}")
        n_elements = math.prod(file_info.shape)
        source = load
        if spec.permute_qk and name.endswith(("attn_q.weight", "attn_q.bias", "attn_k.weight", "attn_k.bias")):
            heads = n_heads if ".attn_q." in name else n_kv_heads
            source = lambda load=load, heads=heads, rows=file_info.shape[0]: (  # noqa: E731
                _permute_for_rope(load().reshape(rows, -1), heads))
        elif spec.norm_shift and name.endswith("norm.weight"):
            source = lambda load=load, stored=ggml_type, n=n_elements: (  # noqa: E731
                dequantize(load(), stored, (n,)) + np.float32(spec.norm_shift))
            ggml_type = GGMLType.F32
        info = TensorInfo(name, tuple(reversed(file_info.shape)), ggml_type, 0, tensor_nbytes(ggml_type, n_elements))
        sources[name] = source, info
    for name, slices in experts.items():
        sources[name] = _stacked_experts(checkpoint, name, slices)
    for hf_name, halves in mxfp4.items():
        layer, parts = fused_expert_parts(hf_name)
        for part in parts:
            name = f"blk.{layer}.{part.gguf_name}"
            sources[name] = _mxfp4_expert_part(hf_name, halves, part, name)
    return sources


def _mxfp4_expert_part(hf_name: str, halves: dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]],
                       part: FusedExpertPart, name: str) -> tuple[Callable[[], np.ndarray], TensorInfo]:
    """One GGUF MXFP4 tensor from a checkpoint's MXFP4 matrix (NAME_blocks, NAME_scales): every other row for gate or
    up, each block's exponent byte then its 32 codes repacked from HF's order (byte j: codes 2j, 2j + 1) to ggml's
    (byte j: codes j, j + 16), as llama.cpp's converter repacks them."""
    missing = [hf_name + suffix for suffix in MXFP4_SUFFIXES if suffix not in halves]
    if missing:
        raise ModelFormatError(f"tensor {missing[0]!r} is missing beside its MXFP4 sibling", field=missing[0])
    (blocks_file, blocks), (scales_file, scales) = halves["_blocks"], halves["_scales"]
    if blocks.dtype != "U8" or scales.dtype != "U8" or len(blocks.shape) != 4 or blocks.shape[-1] != 16 or \
            tuple(blocks.shape[:3]) != tuple(scales.shape) or (part.interleaved is not None and blocks.shape[1] % 2):
        raise ModelFormatError(f"tensor {hf_name!r}: MXFP4 blocks {blocks.dtype} {blocks.shape} and scales "
                               f"{scales.dtype} {scales.shape} do not pair (experts, rows, groups, 16) with "
                               f"(experts, rows, groups) bytes", field=hf_name + "_blocks")
    n_experts, rows, groups = scales.shape
    rows //= 1 if part.interleaved is None else 2
    shape = (n_experts, rows, groups * 32)  # row-major (experts, out, in)

    def load() -> np.ndarray:  # (nbytes,) uint8: (experts, rows, groups) blocks of 17 bytes
        codes = blocks_file.tensor_bytes(hf_name + "_blocks").reshape(blocks.shape)
        exponents = scales_file.tensor_bytes(hf_name + "_scales").reshape(scales.shape)
        if part.interleaved is not None:
            codes, exponents = codes[:, part.interleaved::2], exponents[:, part.interleaved::2]
        ordered = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(*codes.shape[:3], 32)  # codes 0 .. 31
        qs = ordered[..., :16] | (ordered[..., 16:] << 4)
        return np.concatenate([exponents[..., None], qs], axis=-1).reshape(-1)

    return load, TensorInfo(name, tuple(reversed(shape)), GGMLType.MXFP4, 0,
                            tensor_nbytes(GGMLType.MXFP4, math.prod(shape)))


def _fused_expert_part(file: SafetensorsFile, hf_name: str, info: SafetensorsTensorInfo, part: FusedExpertPart,
                       name: str) -> tuple[Callable[[], np.ndarray], TensorInfo]:
    """One GGUF tensor cut from an all-experts tensor (experts, ..., columns): every other column (gate or up), and
    (experts, in, out) turned to llama.cpp's (experts, out, in); elements are moved, never converted."""
    ggml_type = GGML_TYPES.get(info.dtype)
    if ggml_type is None:
        raise UnsupportedModelError(f"tensor {hf_name!r} has dtype {info.dtype}; supported: {', '.join(GGML_TYPES)}")
    shape = list(info.shape)
    if part.interleaved is not None:
        if shape[-1] % 2:
            raise ModelFormatError(f"tensor {hf_name!r} has an odd number of gate and up columns {shape[-1]}",
                                   field=hf_name)
        shape[-1] //= 2
    if part.transpose:
        shape[-2], shape[-1] = shape[-1], shape[-2]
    element = np.dtype(f"u{tensor_nbytes(ggml_type, 1)}")  # the stored bits, whatever the float type

    def load() -> np.ndarray:  # (nbytes,) uint8 of the part, row-major
        values = file.tensor_bytes(hf_name).view(element).reshape(info.shape)
        if part.interleaved is not None:
            values = values[..., part.interleaved::2]
        if part.transpose:
            values = values.swapaxes(-1, -2)
        return np.ascontiguousarray(values).view(np.uint8).reshape(-1)

    return load, TensorInfo(name, tuple(reversed(shape)), ggml_type, 0, tensor_nbytes(ggml_type, math.prod(shape)))


def _stacked_experts(checkpoint: dict[str, tuple[SafetensorsFile, SafetensorsTensorInfo]], name: str,
                     slices: dict[int, str]) -> tuple[Callable[[], np.ndarray], TensorInfo]:
    """The 3-d tensor (experts, rows, row length) llama.cpp's converter stacks from HF's one matrix per expert."""
    if sorted(slices) != list(range(len(slices))):
        raise ModelFormatError(f"tensor {name!r}: the checkpoint has experts {sorted(slices)}, not 0..n-1", field=name)
    hf_names = [slices[e] for e in range(len(slices))]
    parts = [checkpoint[hf_name] for hf_name in hf_names]  # (file, info) per expert
    first = parts[0][1]
    for _, info in parts:
        if (info.dtype, info.shape) != (first.dtype, first.shape):
            raise ModelFormatError(f"tensor {name!r}: expert matrices differ in dtype or shape ({first.dtype} "
                                   f"{first.shape} and {info.dtype} {info.shape})", field=name)
    ggml_type = GGML_TYPES.get(first.dtype)
    if ggml_type is None:
        raise UnsupportedModelError(f"tensor {hf_names[0]!r} has dtype {first.dtype}; supported: {', '.join(GGML_TYPES)}")

    def load() -> np.ndarray:  # (nbytes,) uint8: expert 0's matrix, then expert 1's, ...
        return np.concatenate([file.tensor_bytes(hf_name) for (file, _), hf_name in zip(parts, hf_names)])

    shape = (len(parts), *first.shape)  # row-major (experts, rows, row length)
    return load, TensorInfo(name, tuple(reversed(shape)), ggml_type, 0, tensor_nbytes(ggml_type, math.prod(shape)))

