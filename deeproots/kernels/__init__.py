"""Fast CPU primitives over packed weights; see packed.py for the API and its error bounds."""

from .packed import (
    PackedWeight,
    get_num_threads,
    kernel_types,
    pack_weight,
    quantized_linear,
    set_num_threads,
)

__all__ = ["PackedWeight", "get_num_threads", "kernel_types", "pack_weight", "quantized_linear", "set_num_threads"]
