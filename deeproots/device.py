"""`--device cpu|cuda|auto`: which backend runs a model, decided without importing torch unless it is installed.

"cpu" is the packed C core; "cuda" the CUDA backend (backends/cuda.py: PyTorch with a GPU, and triton); "auto" is
cuda when PyTorch and triton are installed and PyTorch sees a GPU, else cpu.
"""

from __future__ import annotations

import importlib.util

from .errors import DeviceError, RequestError

DEVICES = ("cpu", "cuda", "auto")
CUDA_PACKAGES = ("torch", "triton")  # what the cuda backend imports: `pip install 'deeproots[cuda]'` on CUDA torch


def _missing_packages() -> list[str]:
    return [name for name in CUDA_PACKAGES if importlib.util.find_spec(name) is None]


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def require_gpu() -> None:
    """A DeviceError unless PyTorch (installed) sees a GPU: the check before a CUDA backend's first tensor."""
    if not _gpu_visible():
        import torch

        raise DeviceError(f"no CUDA device: PyTorch {torch.__version__} sees no GPU; run with --device cpu")


def backend_for_device(device: str) -> str:
    """The backend name (backends.BACKEND_NAMES) for a --device value; "cuda" without a GPU is a DeviceError."""
    if device not in DEVICES:
        raise RequestError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    missing = _missing_packages()
    if device == "auto":
        return "cuda" if not missing and _gpu_visible() else "cpu"
    if missing:
        raise DeviceError(f"no CUDA device: {' and '.join(missing)} not installed (install PyTorch with CUDA, then "
                          f"pip install 'deeproots[cuda]'); run with --device cpu")
    require_gpu()
    return "cuda"
