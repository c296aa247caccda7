"""Backends: how a model executes (see base.py). `cpu` is the packed C core, `reference` the float32 numpy formulas,
`cuda` the Triton kernels over torch tensors on a device (imported only when asked for: it imports torch)."""

from __future__ import annotations

from ..errors import RequestError
from .base import Backend, Primitives, WeightSource

BACKEND_NAMES = ("cpu", "reference", "cuda")


def backend_named(name: str, *, packed_cache=None, device: str = "cuda") -> Backend:
    """The backend called `name`; `packed_cache` (cpu only) maps weights packed by an earlier load; `device`
    (cuda only) the torch device its tensors live on ("cpu" runs its kernels under Triton's interpreter)."""
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend(packed_cache)
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    if name == "cuda":
        from .cuda import CUDABackend

        return CUDABackend(device)
    raise RequestError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {name!r}")


__all__ = ["BACKEND_NAMES", "Backend", "Primitives", "WeightSource", "backend_named"]
