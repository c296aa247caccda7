"""Backends: how a model executes (see base.py). `cpu` is the packed C core, `reference` the float32 numpy formulas."""

from __future__ import annotations

from ..errors import RequestError
from .base import Backend, Primitives, WeightSource

BACKEND_NAMES = ("cpu", "reference")


def backend_named(name: str, *, packed_cache=None) -> Backend:
    """The backend called `name`; `packed_cache` (cpu only) maps weights packed by an earlier load."""
    if name == "cpu":
        from .cpu import CPUBackend

        return CPUBackend(packed_cache)
    if name == "reference":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    raise RequestError(f"backend must be one of {', '.join(BACKEND_NAMES)}, got {name!r}")


__all__ = ["BACKEND_NAMES", "Backend", "Primitives", "WeightSource", "backend_named"]
