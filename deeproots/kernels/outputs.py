"""The output buffer of a kernel call, shared by every wrapper's fused argument check."""

import torch

F32 = torch.float32


def output_buffer(inputs_ok: bool, out: torch.Tensor | None, rows: int, cols: int) -> torch.Tensor | None:
    """`out` when it is a usable (rows, cols) float32 buffer, a new one when none was given; None when the inputs
    or `out` are unusable, so the caller builds its detailed error (only on that failure path)."""
    if not inputs_ok:
        return None
    if out is None:
        return torch.empty(rows, cols, dtype=F32)
    if out.shape == (rows, cols) and out.dtype == F32 and out.is_cpu and out.is_contiguous():
        return out
    return None
