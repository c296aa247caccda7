"""Weights of a model file, by GGUF tensor name, placed by a backend in the form a layer wants them.

This side reads the file: every tensor is checked against the shape the config implies before anything uses it.
The backend (backends/) decides the form: float32 matrices on the reference backend, packed block formats on the
CPU backend, a device's own layout on others. Both are built from the same file, so tests can hold one against the
other.
"""

from __future__ import annotations

import numpy as np

from ..backends import Backend, Primitives
from ..errors import ModelFormatError
from ..formats.gguf import GGUFFile, TensorInfo
from ..quant import dequantize


class GGUFWeights:
    """Tensors by GGUF name from a GGUFFile, or an HFCheckpoint presenting a folder the same way."""

    def __init__(self, gguf: GGUFFile, backend: Backend):
        self.gguf = gguf
        self.backend = backend
        self._dense: dict[str, np.ndarray] = {}  # a tied table is dequantized once, not twice

    @property
    def primitives(self) -> Primitives:
        """The norms, RoPE, attention and gating that run over what the backend placed."""
        return self.backend.primitives

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def info(self, name: str, expected_shape: tuple[int, ...]) -> TensorInfo:
        """The tensor's entry, checked against the shape the config implies (row-major order, rows first)."""
        info = self.entry(name)
        shape = tuple(reversed(info.shape))  # GGUF lists the row length first
        if shape != expected_shape:
            raise ModelFormatError(
                f"tensor {name!r} has shape {shape}, the metadata implies {expected_shape}", field=name)
        return info

    def entry(self, name: str) -> TensorInfo:
        """The tensor's entry as this source presents it (a parallel rank: its slice), unchecked."""
        info = self.gguf.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"tensor {name!r} is missing from the model file", field=name)
        return info

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes, as the file holds them."""
        return self.gguf.tensor_data(name)

    def release_pages(self) -> None:
        self.gguf.release_pages()

    def tensor(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        """The tensor as float32 in row-major order, e.g. (out_features, in_features) for a matrix, on the host."""
        if name not in self._dense:
            info = self.info(name, expected_shape)
            values = dequantize(self.raw(name), info.ggml_type, info.shape)
            self._dense[name] = values.reshape(expected_shape)
        return self._dense[name]

    def vector(self, name: str, size: int) -> np.ndarray:
        """A 1-d float32 tensor (a norm weight) (size,), where the backend's primitives read it."""
        return self.backend.vector(self.tensor(name, (size,)))

    def has_all(self, names: list[str]) -> bool:
        """Whether the file has these optional sibling tensors: all (True) or none (False); some is an error."""
        present = [self.has(name) for name in names]
        if any(present) and not all(present):
            missing = names[present.index(False)]
            raise ModelFormatError(f"tensor {missing!r} is missing while its siblings are present", field=missing)
        return all(present)

    def optional_stack(self, names: list[str], sizes: list[int]) -> np.ndarray | None:
        """1-d tensors (biases, norm weights) side by side as float32 (sum(sizes),); None when the file has none."""
        if not self.has_all(names):
            return None
        return self.backend.vector(np.concatenate([self.tensor(name, (size,)) for name, size in zip(names, sizes)]))

    def linear(self, name: str, in_features: int, out_features: int):
        """(T, in_features) -> (T, out_features) by the matrix `name` (out_features, in_features)."""
        return self.backend.linear(self, [name], in_features, [out_features])

    def stacked_linear(self, names: list[str], in_features: int, out_features: list[int]):
        """One layer computing several matrices of the same input side by side (q, k, v; or gate, up)."""
        return self.backend.linear(self, names, in_features, out_features)

    def expert_linears(self, names: list[str], n_experts: int, in_features: int, out_features: list[int]) -> list:
        """One layer per expert from 3-d tensors (n_experts, out_features[i], in_features), each computing its slice
        of the named tensors side by side: (T, in_features) -> (T, sum(out_features))."""
        return self.backend.expert_linears(self, names, n_experts, in_features, out_features)

    def stored_shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in row-major order as the file stores it, before any check against the config."""
        if not self.has(name):
            raise ModelFormatError(f"tensor {name!r} is missing from the model file", field=name)
        return tuple(reversed(self.gguf.tensors[name].shape))

    def embedding(self, name: str, vocab_size: int, width: int):
        """A table indexed by token ids (N,) -> (N, width)."""
        return self.backend.embedding(self, name, vocab_size, width)

    def finish(self) -> None:
        """After the model took its weights (the CPU backend then writes its packed cache, if it packed any)."""
        self.backend.finish(self)
