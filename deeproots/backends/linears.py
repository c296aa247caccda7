"""The forms a placed weight takes on the CPU: callables (T, in_features) -> (T, out_features), and embedding tables."""

from __future__ import annotations

import numpy as np

from ..formats.gguf import TensorInfo
from ..kernels import PackedWeight, grouped_product, quantized_linear
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


class Experts:
    """A mixture's experts: one product per expert (`experts[e](x)`), and several experts' products over rows of
    their own (`grouped`): here one product after another, the reference the packed experts are held to."""

    def __init__(self, experts: list[DenseLinear | PackedLinear]):
        self.experts = experts

    def __getitem__(self, expert: int) -> DenseLinear | PackedLinear:
        return self.experts[expert]

    def __len__(self) -> int:
        return len(self.experts)

    def grouped(self, x: np.ndarray, chosen: np.ndarray, starts: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
        """x (M, in_features), rows starts[j]:starts[j + 1] for expert chosen[j] -> (M, out_features); with `rows`
        (M,), product row i reads x[rows[i]] (x then has any number of rows)."""
        x = x if rows is None else x[rows]
        return np.concatenate([self.experts[e](x[a:b]) for e, a, b in zip(chosen, starts[:-1], starts[1:])])


class PackedExperts(Experts):
    """Packed experts of one type and shape: `grouped` is one threaded kernel call (kernels.grouped_product) for
    all the chosen experts, with each row's bits as its expert's product alone gives them."""

    def __init__(self, experts: list[PackedLinear]):
        super().__init__(experts)
        self.datas = [expert.weight.data for expert in experts]  # packed bytes by expert id: decode picks 8 a layer

    def grouped(self, x: np.ndarray, chosen: np.ndarray, starts: np.ndarray,
                rows: np.ndarray | None = None) -> np.ndarray:
        return grouped_product(self.experts[0].weight, tuple(map(self.datas.__getitem__, chosen.tolist())),
                               np.ascontiguousarray(x), starts, rows)


class QuantizedEmbedding:
    """Rows of an embedding table dequantized on demand, so the table stays packed in the file."""

    def __init__(self, raw: np.ndarray, info: TensorInfo):
        self.ggml_type = info.ggml_type
        self.row_length = info.shape[0]
        self.rows = raw.reshape(info.shape[1], -1)  # (vocab, bytes per row)

    def __getitem__(self, tokens: np.ndarray) -> np.ndarray:
        picked = self.rows[tokens]  # (T, bytes per row)
        return dequantize(picked, self.ggml_type, (self.row_length, len(picked)))  # (T, row_length)
