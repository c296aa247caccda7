"""What the wrappers' argument checks share: the output buffer of a kernel call and the layout of fused-qkv heads
(on the fast path), and the messages saying what is wrong with an array argument (built only on the failure path)."""

import numpy as np

from ..errors import RequestError

F32 = np.dtype(np.float32)


def output_buffer(inputs_ok: bool, out: np.ndarray | None, rows: int, cols: int) -> np.ndarray | None:
    """`out` when it is a usable (rows, cols) float32 buffer, a new one when none was given; None when the inputs
    or `out` are unusable, so the caller builds its detailed error (only on that failure path)."""
    if not inputs_ok:
        return None
    if out is None:
        return np.empty((rows, cols), F32)
    if out.shape == (rows, cols) and out.dtype == F32:
        flags = out.flags
        if flags.c_contiguous and flags.writeable:
            return out
    return None


def heads_side_by_side(strides: tuple, t: int, h: int, d: int) -> bool:
    """Byte strides (row, head, col) of a float32 (T, n_heads, D) array whose rows hold n_heads * D floats side by
    side, rows a whole number of floats apart (at least that many): the q and k heads of a fused qkv product. Any
    strides when there is nothing to read (numpy gives empty arrays strides of 0)."""
    row, head, col = strides
    return t * h == 0 or (col == 4 and (head == 4 * d or h == 1) and (t == 1 or (row >= 4 * h * d and row % 4 == 0)))


def bad_array(name: str, a: object, ndim: int, dtype: np.dtype = F32) -> RequestError | None:
    """The error for `a` unless it is a numpy array of `dtype` with `ndim` dimensions."""
    if not isinstance(a, np.ndarray):
        return RequestError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        return RequestError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        return RequestError(f"{name} must be {ndim}-d, got shape {a.shape}")
    return None


def bad_contiguous(name: str, a: np.ndarray, shape: tuple, writeable: bool = False) -> RequestError | None:
    """The error for `a` unless it is C-contiguous with `shape` (and writeable, where asked: the kernel writes it)."""
    if a.shape != shape:
        return RequestError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        return RequestError(f"{name} must be C-contiguous; call np.ascontiguousarray first")
    if writeable and not a.flags.writeable:
        return RequestError(f"{name} is read-only; the kernel writes it")
    return None
