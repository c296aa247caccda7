"""How weights are stored: one class per GGML block format, and whole-tensor (de)quantization.

    from deeproots.quant import dequantize, quantize, supported_types, block_format

Importing the family modules registers their formats.
"""

from . import float_types, kquants, legacy, mxfp4  # noqa: F401  (register the formats)
from .base import BlockFormat, Field, block_format, quantizable_types, supported_types
from .tensors import dequantize, quantize
from .types import GGMLType

__all__ = [
    "BlockFormat",
    "Field",
    "GGMLType",
    "block_format",
    "dequantize",
    "quantizable_types",
    "quantize",
    "supported_types",
]
