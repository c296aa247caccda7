"""Weights of a model file, by GGUF tensor name, in the form a layer wants them.

Two paths: the reference path dequantizes every matrix to float32 at load (slow, obviously
correct); the fast path keeps matrices packed in their block format and multiplies them with the
compiled kernels. Both are built from the same file, so tests can hold one against the other.
"""

from __future__ import annotations

import numpy as np

from ..cache.packed import PackedCache
from ..errors import ModelFormatError
from ..formats.gguf import GGUFFile, TensorInfo
from ..kernels import PackedWeight, kernel_types, pack_weight, quantized_linear
from ..quant import GGMLType, dequantize
from ..quant.legacy import q5_0_as_q8_0
from .primitives import FAST, REFERENCE


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


class GGUFWeights:
    """Tensors by GGUF name from a GGUFFile, or an HFCheckpoint presenting a folder the same way."""

    def __init__(self, gguf: GGUFFile, *, packed: bool = True, cache: PackedCache | None = None):
        """`cache`: the file's packed weights on disk (fast path): maps those it has, keeps those packed anew."""
        self.gguf = gguf
        self.packed = packed
        self.cache = cache
        self.primitives = FAST if packed else REFERENCE  # norms, RoPE, attention, gating to go with the weights
        self._dense: dict[str, np.ndarray] = {}  # a tied table is dequantized once, not twice

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def _info(self, name: str, expected_shape: tuple[int, ...]) -> TensorInfo:
        """The tensor's entry, checked against the shape the config implies (row-major order, rows first)."""
        info = self.gguf.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"tensor {name!r} is missing from the model file", field=name)
        shape = tuple(reversed(info.shape))  # GGUF lists the row length first
        if shape != expected_shape:
            raise ModelFormatError(
                f"tensor {name!r} has shape {shape}, the metadata implies {expected_shape}", field=name)
        return info

    def tensor(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """The tensor as float32 in row-major order, e.g. (out_features, in_features) for a matrix."""
        if name not in self._dense:
            info = self._info(name, expected_shape)
            values = dequantize(self.gguf.tensor_data(name), info.ggml_type, info.shape)
            self._dense[name] = values.reshape(expected_shape)
        return self._dense[name]

    def optional_stack(self, names: list[str], sizes: list[int]) -> np.ndarray | None:
        """1-d tensors (biases, norm weights) side by side as float32 (sum(sizes),); None when the file has none."""
        present = [self.has(name) for name in names]
        if not any(present):
            return None
        if not all(present):
            missing = names[present.index(False)]
            raise ModelFormatError(f"tensor {missing!r} is missing while its siblings are present", field=missing)
        return np.concatenate([self.tensor(name, (size,)) for name, size in zip(names, sizes)])

    def linear(self, name: str, in_features: int, out_features: int) -> DenseLinear | PackedLinear:
        info = self._info(name, (out_features, in_features))
        if self.packed and self._kernel_type(info.ggml_type) in kernel_types():
            return self._packed([name], info.ggml_type, info.shape)
        return DenseLinear(self.tensor(name, (out_features, in_features)))

    def stacked_linear(self, names: list[str], in_features: int,
                       out_features: list[int]) -> DenseLinear | PackedLinear | ConcatLinear:
        """One layer computing several matrices of the same input side by side (q, k, v; or gate, up).

        On the fast path matrices of one block format are packed together: one kernel call, and the
        activations are quantized once instead of once per matrix.
        """
        infos = [self._info(name, (rows, in_features)) for name, rows in zip(names, out_features)]
        ggml_type = infos[0].ggml_type
        if not self.packed:
            return DenseLinear(np.concatenate([self.tensor(n, (rows, in_features))
                                              for n, rows in zip(names, out_features)]))
        if self._kernel_type(ggml_type) in kernel_types() and all(info.ggml_type == ggml_type for info in infos):
            # GGUF stores a matrix row after row, so the matrices' rows stack into one weight.
            return self._packed(names, ggml_type, (in_features, sum(out_features)))
        return ConcatLinear([self.linear(name, in_features, rows) for name, rows in zip(names, out_features)])

    @staticmethod
    def _kernel_type(ggml_type: int) -> int:
        """The block format a kernel runs this type as: Q5_0 widens to Q8_0 without loss."""
        return GGMLType.Q8_0 if ggml_type == GGMLType.Q5_0 else ggml_type

    def _packed(self, names: list[str], ggml_type: int, shape: tuple[int, int]) -> PackedLinear:
        """One weight stacking the rows of the named matrices: from the cache on disk, else packed from the file."""
        key, kernel_type = "+".join(names), self._kernel_type(ggml_type)
        cached = self.cache.get(key, kernel_type, *shape) if self.cache is not None else None
        if cached is not None:
            return PackedLinear(cached)
        parts = [self.gguf.tensor_data(name) for name in names]
        if ggml_type == GGMLType.Q5_0:
            parts = [q5_0_as_q8_0(part) for part in parts]
        weight = pack_weight(parts, kernel_type, shape)
        if self.cache is not None:
            self.cache.add(key, weight)
        # The packed copy is what runs now: drop the file's pages as we go, so load never holds both.
        self.gguf.release_pages()
        return PackedLinear(weight)

    def finish(self) -> None:
        """After the model took its weights: write the packed cache if this load had to pack any."""
        if self.cache is not None:
            self.cache.save()

    def embedding(self, name: str, vocab_size: int, width: int) -> np.ndarray | QuantizedEmbedding:
        """A table indexed by token ids: dequantized whole on the reference path, row by row on the fast one."""
        if not self.packed:
            return self.tensor(name, (vocab_size, width))
        info = self._info(name, (vocab_size, width))
        return QuantizedEmbedding(self.gguf.tensor_data(name), info)
