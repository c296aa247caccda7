"""The slow, obviously correct matrix product that the compiled kernels are tested against."""

import numpy as np

from ..quant import dequantize


def reference_linear(x: np.ndarray, raw: np.ndarray, ggml_type: int, shape: tuple[int, int]) -> np.ndarray:
    """x (T, K) @ dequantize(W).T in float64 -> (T, N); raw and shape (K, N) as given to pack_weight."""
    w = dequantize(raw.reshape(-1).view(np.uint8), ggml_type, shape)  # (N, K) float32
    return x.astype(np.float64) @ w.astype(np.float64).T
