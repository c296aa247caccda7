"""ModelConfig: the hyperparameters of a model, read from the model file's own metadata.

Never from a path or a file name. Unknown keys are ignored; a missing required key raises
ModelFormatError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ModelFormatError


@dataclass(frozen=True)
class ExpertConfig:
    """The mixture-of-experts keys llama.cpp writes (`{arch}.expert_*`)."""
    count: int  # experts per layer
    used_count: int  # experts each token is routed to (top-k)
    ffn_dim: int  # hidden size of one expert's gated MLP
    shared_ffn_dim: int | None  # Qwen 2 MoE's always-on shared expert, or None
    normalize_weights: bool  # the top-k probabilities are rescaled to sum to 1


@dataclass(frozen=True)
class YarnScaling:
    """YaRN's RoPE extension (`{arch}.rope.scaling.type` "yarn"; backends/formulas.yarn_frequencies). `truncate`
    rounds the blend's edge dimensions outward, as llama.cpp always does and transformers by default; gpt-oss's
    config turns it off (UNTRUNCATED_YARN)."""
    factor: float
    original_context: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True


# Families whose YaRN blends over exact (not rounded) edge dimensions: gpt-oss's config says truncate: false, and
# its GGUF files have no key for it.
UNTRUNCATED_YARN = frozenset({"gpt-oss"})

# Whether a family rescales its top-k router probabilities when the file has no `{arch}.expert_weights_norm`:
# llama.cpp's per-architecture choice (Mixtral and Qwen 3 MoE do; Qwen 2 MoE and OLMoE do not).
NORMALIZED_EXPERT_WEIGHTS = frozenset({"llama", "qwen3moe"})


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layers: int
    d_model: int  # embedding width
    n_heads: int
    n_kv_heads: int  # grouped-query attention: n_heads is a multiple of this
    head_dim: int
    ffn_dim: int
    vocab_size: int
    context_length: int  # the longest context the model was trained for
    norm_eps: float
    rope_theta: float
    rope_dim: int  # leading dimensions of each head that RoPE rotates
    rope_scale: float = 1.0  # linear position scaling (positions are divided by it)
    attention_scale: float | None = None  # multiplies q.k; None means 1/sqrt(head_dim)
    sliding_window: int | None = None  # a query sees this many newest keys (itself included) on sliding layers
    rope_theta_local: float | None = None  # RoPE base of sliding-window layers where it differs (Gemma 3)
    experts: ExpertConfig | None = None  # a mixture of experts replaces the MLP (Mixtral, Qwen MoE, OLMoE)
    rope_yarn: YarnScaling | None = None  # YaRN frequencies (gpt-oss) in place of the plain ones


DEFAULT_CONTEXT = 4096  # tokens a load gets unless told otherwise; the model's own maximum when it is smaller


def default_context(config: ModelConfig | None) -> int:
    """The context a load gets when none is asked for: the model's trained length, capped at DEFAULT_CONTEXT."""
    return min(config.context_length, DEFAULT_CONTEXT) if config is not None else DEFAULT_CONTEXT


def _required(metadata: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in metadata:
        raise ModelFormatError(f"required metadata key {key!r} is missing", field=key)
    value = metadata[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ModelFormatError(f"metadata key {key!r} must be an integer, got {value!r}", field=key)
    if kind is float and not isinstance(value, (int, float)):
        raise ModelFormatError(f"metadata key {key!r} must be a number, got {value!r}", field=key)
    if kind is int and value < 1:
        raise ModelFormatError(f"metadata key {key!r} must be positive, got {value}", field=key)
    return kind(value)


def config_from_gguf(metadata: Mapping[str, Any], vocab_size: int) -> ModelConfig:
    """Build the config from GGUF metadata keys `{arch}.*` (as llama.cpp names them)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError("general.architecture is missing or not a string", field="general.architecture")

    def key(name: str) -> str:
        return f"{arch}.{name}"

    d_model = _required(metadata, key("embedding_length"), int)
    n_heads = _required(metadata, key("attention.head_count"), int)
    n_kv_heads = int(metadata.get(key("attention.head_count_kv"), n_heads))
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ModelFormatError(f"head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}",
                               field=key("attention.head_count_kv"))
    head_dim = int(metadata.get(key("attention.key_length"), d_model // n_heads))
    def optional(name: str, kind: type) -> Any:
        return _required(metadata, key(name), kind) if key(name) in metadata else None

    ffn_dim = _required(metadata, key("feed_forward_length"), int)
    scaling_type = metadata.get(key("rope.scaling.type"), "none")
    rope_scale = float(metadata.get(key("rope.scaling.factor"), 1.0)) if scaling_type == "linear" else 1.0
    return ModelConfig(
        architecture=arch,
        n_layers=_required(metadata, key("block_count"), int),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn_dim=ffn_dim,
        vocab_size=int(metadata.get(key("vocab_size"), vocab_size)),
        context_length=_required(metadata, key("context_length"), int),
        norm_eps=_required(metadata, key("attention.layer_norm_rms_epsilon"), float),
        rope_theta=float(metadata.get(key("rope.freq_base"), 10000.0)),
        rope_dim=int(metadata.get(key("rope.dimension_count"), head_dim)),
        rope_scale=rope_scale,
        attention_scale=optional("attention.scale", float),
        sliding_window=optional("attention.sliding_window", int),
        rope_theta_local=optional("rope.freq_base_swa", float),
        experts=_experts(metadata, arch, ffn_dim),
        rope_yarn=_yarn(metadata, arch) if scaling_type == "yarn" else None,
    )


def _yarn(metadata: Mapping[str, Any], arch: str) -> YarnScaling:
    """The `{arch}.rope.scaling.*` keys of YaRN, with llama.cpp's defaults for the betas."""
    def number(name: str, default: float | None = None) -> float:
        key = f"{arch}.rope.scaling.{name}"
        if key not in metadata and default is not None:
            return default
        return _required(metadata, key, float)

    return YarnScaling(factor=number("factor"),
                       original_context=_required(metadata, f"{arch}.rope.scaling.original_context_length", int),
                       beta_fast=number("yarn_beta_fast", 32.0), beta_slow=number("yarn_beta_slow", 1.0),
                       truncate=arch not in UNTRUNCATED_YARN)


def _experts(metadata: Mapping[str, Any], arch: str, ffn_dim: int) -> ExpertConfig | None:
    """The `{arch}.expert_*` keys, or None for a dense model (no expert_count)."""
    if f"{arch}.expert_count" not in metadata:
        return None

    def key(name: str) -> str:
        return f"{arch}.{name}"

    count = _required(metadata, key("expert_count"), int)
    used = _required(metadata, key("expert_used_count"), int)
    if used > count:
        raise ModelFormatError(f"metadata key {key('expert_used_count')!r} is {used}, more than the {count} experts "
                               f"of {key('expert_count')!r}", field=key("expert_used_count"))
    normalize = metadata.get(key("expert_weights_norm"), arch in NORMALIZED_EXPERT_WEIGHTS)
    if not isinstance(normalize, bool):
        raise ModelFormatError(f"metadata key {key('expert_weights_norm')!r} must be a bool, got {normalize!r}",
                               field=key("expert_weights_norm"))
    shared = key("expert_shared_feed_forward_length")
    return ExpertConfig(
        count=count, used_count=used,
        # Mixtral's files have no expert length: its experts are feed_forward_length wide
        ffn_dim=_required(metadata, key("expert_feed_forward_length"), int)
        if key("expert_feed_forward_length") in metadata else ffn_dim,
        shared_ffn_dim=_required(metadata, shared, int) if shared in metadata else None,
        normalize_weights=normalize)
