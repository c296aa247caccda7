"""Mixtures of experts on the CUDA backend: the router on the device, and per chosen expert one product over that
expert's slice of the 3-d block tensor, uploaded once with the experts one after another (a slice is a view).

The routing follows backends/formulas.py's `route` (softmax over all experts, top-k with ties to the lower id, optional
renormalisation) in torch on the device; only the (N, top_k) expert ids come to the host, where the products are
scheduled (models/moe.py's MixtureOfExperts.experts_output gathers, scales and sums the rows on the device).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..kernels.triton.linear import quantized_linear
from ..models.moe import MixtureOfExperts, SharedExpert


def device_route(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[np.ndarray, torch.Tensor]:
    """Router logits (N, n_experts) on the device -> (expert ids (N, top_k) on the host, weights (N, top_k) float32
    on the device), as backends/formulas.py's route computes them."""
    probabilities = torch.softmax(logits.float(), dim=-1)  # (N, n_experts)
    ordered, ids = torch.sort(probabilities, dim=-1, descending=True, stable=True)  # ties: the lower id first
    weights = ordered[:, :top_k]  # (N, top_k)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids[:, :top_k].cpu().numpy(), weights


class DeviceSharedExpert(SharedExpert):
    def sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class DeviceMixtureOfExperts(MixtureOfExperts):
    shared_class = DeviceSharedExpert


def device_mixture_class(moe_class: type) -> type:
    """The device variant of a model's mixture class; gpt-oss's routing and clamped gating are not placed yet."""
    if moe_class is not MixtureOfExperts:
        raise UnsupportedModelError(f"the cuda backend does not run {moe_class.__name__} (gpt-oss's experts) yet; "
                                    "use --device cpu")
    return DeviceMixtureOfExperts


class BlockExperts:
    """Experts in one block format: `raw` (n_experts, bytes of one expert's stacked matrices) on the device."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, in_features: int, out_features: int):
        self.raw, self.ggml_type, self.in_features, self.out_features = raw, ggml_type, in_features, out_features

    def __len__(self) -> int:
        return self.raw.shape[0]

    def product(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return quantized_linear(x, self.raw[expert], self.ggml_type, self.in_features, self.out_features)

    def grouped(self, x: torch.Tensor, chosen: np.ndarray, starts: np.ndarray,
                rows: np.ndarray | None = None) -> torch.Tensor:
        """x (M, in_features), rows starts[j]:starts[j + 1] for expert chosen[j] -> (M, out_features); with `rows`
        (M,), product row i reads x[rows[i]]."""
        x = x if rows is None else x[rows]
        return torch.cat([self.product(x[a:b], int(e)) for e, a, b in zip(chosen, starts[:-1], starts[1:])])


class FloatExperts(BlockExperts):
    """Experts as float matrices `raw` (n_experts, out_features, in_features) on the device; float32 out."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight, None, weight.shape[2], weight.shape[1])

    def product(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return F.linear(x.to(self.raw.dtype), self.raw[expert]).float()
