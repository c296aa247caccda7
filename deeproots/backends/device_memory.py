"""What the CUDA backend places on the device, in bytes, without torch: for the check before a load and `inspect`.

Block formats the kernels read stay as stored (Q5_0 widens to Q8_0, losslessly), F16/BF16/F32 stay as they are,
every other type becomes float32 (dequantizing is exact); the token embeddings stay in host memory unless the
output projection is tied to them.
"""

from __future__ import annotations

from typing import Iterable

from ..formats.gguf import TensorInfo
from ..quant import GGMLType
from ..quant.types import BLOCK_GEOMETRY

# the block formats the Triton kernels read as stored (kernels/triton/blocks.py's TILE_TYPES)
DEVICE_BLOCK_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)
DEVICE_FLOAT_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.BF16)


def device_type(ggml_type: int) -> int:
    """The type a matrix of `ggml_type` has on the device: itself, Q8_0 for Q5_0, else F32."""
    if ggml_type == GGMLType.Q5_0:
        return GGMLType.Q8_0
    return ggml_type if ggml_type in DEVICE_BLOCK_TYPES or ggml_type in DEVICE_FLOAT_TYPES else GGMLType.F32


def placed_nbytes(info: TensorInfo) -> int:
    geometry = BLOCK_GEOMETRY[device_type(info.ggml_type)]
    return info.n_elements // geometry.block_size * geometry.type_size


def device_weight_bytes(tensors: Iterable[TensorInfo]) -> int:
    """Bytes of device memory the weights take on the CUDA backend."""
    tensors = list(tensors)
    tied = not any(info.name == "output.weight" for info in tensors)
    return sum(placed_nbytes(info) for info in tensors if tied or info.name != "token_embd.weight")
