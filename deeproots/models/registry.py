"""Architecture registry: GGUF architecture name -> model class, imported only when used."""

from __future__ import annotations

import importlib

from ..errors import UnsupportedModelError

# architecture -> (module, class); a new architecture is one module and one line here.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("deeproots.models.llama", "Llama"),
    "gemma3": ("deeproots.models.gemma3", "Gemma3"),
    "qwen2": ("deeproots.models.qwen", "Qwen"),
    "qwen3": ("deeproots.models.qwen", "Qwen"),
    "qwen2moe": ("deeproots.models.qwen", "Qwen"),  # experts and a shared expert: models/moe.py, from the tensors
    "qwen3moe": ("deeproots.models.qwen", "Qwen"),
    "olmoe": ("deeproots.models.olmoe", "Olmoe"),
    "gpt-oss": ("deeproots.models.gpt_oss", "GptOss"),
}
# Files that name a sibling architecture with the same tensors and maths.
ALIASES: dict[str, str] = {
    "mistral": "llama",
}


def supported_architectures() -> list[str]:
    return sorted([*ARCHITECTURES, *ALIASES])


def model_class(architecture: str) -> type:
    name = ALIASES.get(architecture, architecture)
    if name not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; supported: {', '.join(supported_architectures())}")
    module, cls = ARCHITECTURES[name]
    return getattr(importlib.import_module(module), cls)
