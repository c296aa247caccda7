"""Fast CPU primitives: products over packed weights (packed.py, with their error bounds) and attention over a KV
cache (attention.py)."""

from .attention import cached_attention
from .packed import (
    PackedWeight,
    get_num_threads,
    kernel_types,
    pack_weight,
    quantized_linear,
    set_num_threads,
)

__all__ = [
    "PackedWeight",
    "cached_attention",
    "get_num_threads",
    "kernel_types",
    "pack_weight",
    "quantized_linear",
    "set_num_threads",
]
