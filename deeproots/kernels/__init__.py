"""Fast CPU primitives: products over packed weights (packed.py, with their error bounds), attention over a KV
cache (attention.py), RMSNorm, RoPE and SiLU gating (elementwise.py), and a mixture's routing and the sum of its
experts' rows (mixture.py)."""

from .attention import cached_attention
from .elementwise import rms_norm, rotary_embedding_, silu_mul
from .mixture import combine_experts, route
from .packed import (
    AMX_EMULATION_BUILT,
    AMX_STATUS,
    PackedWeight,
    amx_enabled,
    emulate_amx,
    experts_linear,
    grouped_product,
    get_num_threads,
    kernel_path,
    kernel_types,
    pack_weight,
    packed_nbytes,
    quantized_linear,
    set_amx,
    set_num_threads,
)

__all__ = [
    "AMX_EMULATION_BUILT",
    "AMX_STATUS",
    "PackedWeight",
    "amx_enabled",
    "emulate_amx",
    "cached_attention",
    "combine_experts",
    "experts_linear",
    "grouped_product",
    "get_num_threads",
    "kernel_path",
    "kernel_types",
    "pack_weight",
    "packed_nbytes",
    "quantized_linear",
    "rms_norm",
    "rotary_embedding_",
    "route",
    "set_amx",
    "set_num_threads",
    "silu_mul",
]
