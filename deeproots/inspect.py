"""What a model file holds, for `deeproots inspect` and `deeproots list`: read from the header only."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .cache.kv import kv_cache_nbytes, kv_type_fits
from .backends.device_memory import device_weight_bytes
from .config import ModelConfig, config_from_gguf, default_context
from .errors import ModelFormatError
from .model_file import open_model_file
from .quant.types import GGMLType
from .store import disk_size

# llama.cpp's general.file_type values (enum llama_ftype) for the names users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


@dataclass(frozen=True)
class ModelSummary:
    path: str
    file_size: int
    architecture: str
    name: str
    quantization: str
    n_params: int
    weight_bytes: int
    tensor_types: dict[str, int]  # type name -> tensor count
    config: ModelConfig | None  # None when the architecture's keys are missing
    vocab_size: int
    chat_template: str | None  # the file's own; None for a file without one (a built-in may still apply)
    license: str  # general.license, "" when the file does not say
    cuda_weight_bytes: int = 0  # what the weights take in device memory on the CUDA backend (device_memory.py)

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def kv_cache_bytes(self, context: int, kv_type: str = "f16") -> int | None:
        """Bytes of a `kv_type` KV cache for `context` tokens; None when unknown or when this model cannot have one
        (q8_0 needs a head size that is a multiple of 32)."""
        c = self.config
        if c is None or not kv_type_fits(kv_type, c.head_dim):
            return None
        return kv_cache_nbytes(c.n_layers, c.n_kv_heads, c.head_dim, context, kv_type)


def type_name(ggml_type: int) -> str:
    return GGMLType(ggml_type).name if ggml_type in GGMLType._value2member_map_ else f"type {ggml_type}"


def summarize(path: str | os.PathLike) -> ModelSummary:
    with open_model_file(path) as model_file:  # a GGUF file or a Hugging Face folder
        metadata, tensors = model_file.metadata, list(model_file.tensors.values())
        counts = Counter(type_name(t.ggml_type) for t in tensors)
        vocab = metadata.get("tokenizer.ggml.tokens", [])
        file_type = metadata.get("general.file_type")
        quantization = FILE_TYPES.get(file_type) if isinstance(file_type, int) else None
        try:
            config = config_from_gguf(metadata, len(vocab))
        except ModelFormatError:  # a summary still helps for a file we cannot run
            config = None
        return ModelSummary(
            path=str(path),
            file_size=disk_size(Path(path)),
            architecture=str(metadata.get("general.architecture", "?")),
            name=str(metadata.get("general.name", "")),
            quantization=quantization or (counts.most_common(1)[0][0] if counts else "?"),
            n_params=sum(t.n_elements for t in tensors),
            weight_bytes=sum(t.nbytes or 0 for t in tensors),
            tensor_types=dict(counts.most_common()),
            config=config,
            vocab_size=len(vocab),
            chat_template=template if isinstance(template := metadata.get("tokenizer.chat_template"), str) else None,
            license=str(metadata.get("general.license", "")),
            cuda_weight_bytes=device_weight_bytes(tensors),
        )


def describe(summary: ModelSummary, context: int | None, kv_type: str,
             device: str = "cpu") -> list[tuple[str, str]]:
    """(label, value) rows for `deeproots inspect` and `show`: what the file holds and its memory at `context`
    (default: what run would use), in host memory or with `device` "cuda" in the GPU's."""
    c = summary.config
    rows = [
        ("file", f"{summary.path} ({human_bytes(summary.file_size)})"),
        ("name", summary.name),
        ("architecture", summary.architecture),
        ("parameters", human_count(summary.n_params)),
        ("quantization", summary.quantization),
        ("tensor types", ", ".join(f"{name} x{count}" for name, count in summary.tensor_types.items())),
        ("context length", str(c.context_length) if c else "?"),
        ("layers / width / heads", f"{c.n_layers} / {c.d_model} / {c.n_heads} (kv {c.n_kv_heads})" if c else "?"),
        ("vocabulary", f"{summary.vocab_size} tokens"),
        ("chat template", "yes" if summary.has_chat_template else "no (use --raw)"),
    ]
    context = context or default_context(c)
    kv = summary.kv_cache_bytes(context, kv_type)
    weights = summary.cuda_weight_bytes if device == "cuda" else summary.weight_bytes
    if kv is None:
        memory = f"weights {human_bytes(weights)}; no {kv_type} KV cache for this model"
    else:
        memory = f"{human_bytes(weights + kv)} (weights {human_bytes(weights)} + {kv_type} KV cache {human_bytes(kv)})"
    rows.append((f"{'device ' if device == 'cuda' else ''}memory at ctx {context}", memory))
    return rows


def print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def human_count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
