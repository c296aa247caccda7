"""Weights of a model file, by GGUF tensor name, in the form a layer wants them."""

from __future__ import annotations

import torch

from ..errors import ModelFormatError
from ..formats.gguf import GGUFFile
from ..quant import dequantize


class DenseLinear:
    """y = x @ W.T with W dequantized to float32 once at load (the reference path)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight  # (out_features, in_features)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T  # (T, in) -> (T, out)


class GGUFWeights:
    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def tensor(self, name: str, expected_shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor as float32 in PyTorch order, e.g. (out_features, in_features) for a matrix.

        `expected_shape` comes from the config, so a file whose tensors disagree with its own
        metadata is rejected here, naming the tensor.
        """
        info = self.gguf.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"tensor {name!r} is missing from the model file", field=name)
        torch_shape = tuple(reversed(info.shape))
        if torch_shape != expected_shape:
            raise ModelFormatError(
                f"tensor {name!r} has shape {torch_shape}, the metadata implies {expected_shape}", field=name)
        values = dequantize(self.gguf.tensor_data(name), info.ggml_type, info.shape)
        return torch.from_numpy(values.reshape(torch_shape))

    def linear(self, name: str, in_features: int, out_features: int) -> DenseLinear:
        return DenseLinear(self.tensor(name, (out_features, in_features)))
