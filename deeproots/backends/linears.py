"""The forms a placed weight takes on the CPU: callables (T, in_features) -> (T, out_features), and embedding tables."""

from __future__ import annotations

import numpy as np

from ..formats.gguf import TensorInfo
from ..kernels import PackedWeight, quantized_linear
from ..quant import dequantize


class DenseLinear:
    """y = x @ W.T with W dequantized to float32 once at load (the reference path)."""

    def __init__(self, weight: np.ndarray):
        self.weight = weight  # (out_features, in_features)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T  # (T, in) -> (T, out)


class PackedLinear:
    """y = x @ W.T with W kept in its block format and multiplied by the compiled kernel."""

    def __init__(self, weight: PackedWeight):
        self.weight = weight

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return quantized_linear(np.ascontiguousarray(x), self.weight)  # (T, in) -> (T, out)


class ConcatLinear:
    """Several linear layers over the same input, outputs side by side (when they cannot share one kernel)."""

    def __init__(self, parts: list[DenseLinear | PackedLinear]):
        self.parts = parts

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([part(x) for part in self.parts], axis=-1)  # (T, sum of out_features)


class QuantizedEmbedding:
    """Rows of an embedding table dequantized on demand, so the table stays packed in the file."""

    def __init__(self, raw: np.ndarray, info: TensorInfo):
        self.ggml_type = info.ggml_type
        self.row_length = info.shape[0]
        self.rows = raw.reshape(info.shape[1], -1)  # (vocab, bytes per row)

    def __getitem__(self, tokens: np.ndarray) -> np.ndarray:
        picked = self.rows[tokens]  # (T, bytes per row)
        return dequantize(picked, self.ggml_type, (self.row_length, len(picked)))  # (T, row_length)
