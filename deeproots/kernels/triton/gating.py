"""Gated activations, silu(gate) * up and gelu_tanh(gate) * up, over rows [gate | up]: one launch, each value read
once, instead of torch's activation and product."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _gated_kernel(x_ptr, y_ptr, F, GELU: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = columns < F
    gate = tl.load(x_ptr + row * 2 * F + columns, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * 2 * F + F + columns, mask=mask, other=0.0)
    if GELU:  # tanh approximation (Gemma): 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))), tanh by exp
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        activated = gate * (1.0 - 1.0 / (tl.exp(2.0 * inner) + 1.0))  # 0.5 (1 + tanh(u)) = 1 - 1 / (e^2u + 1)
    else:
        activated = gate / (1.0 + tl.exp(-gate))
    tl.store(y_ptr + row * F + columns, activated * up, mask=mask)


def gated(gate_up: torch.Tensor, gelu: bool) -> torch.Tensor:
    """gate_up (T, 2F) float32 [gate | up] -> (T, F): silu(gate) * up, or with `gelu` gelu_tanh(gate) * up."""
    gate_up = gate_up.contiguous()
    T, F = gate_up.shape[0], gate_up.shape[1] // 2
    y = torch.empty((T, F), dtype=torch.float32, device=gate_up.device)
    if T and F:
        _gated_kernel[(T, triton.cdiv(F, BLOCK))](gate_up, y, F, GELU=gelu, BLOCK=BLOCK)
    return y
