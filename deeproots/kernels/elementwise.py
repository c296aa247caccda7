"""Row-wise primitives of every block, one compiled call each: RMSNorm, rotary embeddings, SiLU gating.

    y = rms_norm(x, weight, eps)                      # x (T, d) -> (T, d) = x * rsqrt(mean(x^2) + eps) * weight
    rotary_embedding_(qk, cos, sin, start, rope_dim, interleaved)   # in place on qk (T, n_heads, D)
    h = silu_mul(gate_up)                             # gate_up (T, 2F) = [gate | up] -> (T, F) = silu(gate) * up

They compute the formulas of backends/formulas.py (rms_norm, RotaryEmbedding, silu_mul) in one pass over each row,
not as 6-15 separate array operations (~1-15 us each, with a temporary per step), so a decode-sized call costs about
a microsecond.
Every row is computed by the same code whatever T, its place in the call or the thread (csrc/elementwise.c), so a
row's bits do not depend on how the rows were batched. Rows are split over the kernels' thread pool only when a
call is large (prefill); the GIL is released while the kernels run.

Error bounds against exact arithmetic on the same float32 inputs, u = 2^-24 (tests/kernels/test_elementwise.py):
  rms_norm     |out - exact| <= 3u |exact| + 1e-12 |exact|: the sum of squares, the mean, + eps and 1/sqrt are in
               float64 (rounding 1e-13 at most for d < 10^6); then one rounding to float32 and two products x*r*w.
  rotary       |out - exact| <= 2u (|first * cos| + |second * sin|) per output (a product each, then the sum);
               with the same tables the result is also the same bits as layers.RotaryEmbedding in float32 (the
               same three roundings, no fused multiply-add).
  silu_mul     |out - exact| <= 6u |exact| (exp within 2u, then 1 + e, the division and the product by up),
               for gate >= -88; below that silu(gate) < 88 e^-88 in magnitude and is returned within |gate| e^-88.
Results that fall in float32's subnormal range (|value| < 2^-126) carry an absolute error of up to 2^-149 more.
"""

import numpy as np

from ..errors import RequestError
from . import _cpu
from .outputs import F32 as _F32, bad_array, bad_contiguous, heads_side_by_side, output_buffer

_rms_norm, _rope, _silu_mul = _cpu.rms_norm, _cpu.rope, _cpu.silu_mul  # looked up once: decode calls them per layer


def _first_error(*checks: RequestError | None) -> RequestError | None:
    return next((c for c in checks if c is not None), None)


def _bad_norm(x: object, weight: object, eps: object, out: object) -> RequestError:
    """The first thing wrong with rms_norm's arguments (only built on the failure path)."""
    error = _first_error(bad_array("x", x, 2), bad_array("weight", weight, 1))
    if error is None:
        t, d = x.shape
        error = _first_error(
            RequestError(f"x must have at least one column, got shape {(t, d)}") if d == 0 else None,
            bad_contiguous("x", x, (t, d)),
            bad_contiguous("weight", weight, (d,)),
            None if isinstance(eps, (float, int)) else RequestError(f"eps must be a float, got {type(eps).__name__}"),
            None if out is None else bad_array("out", out, 2) or bad_contiguous("out", out, (t, d), writeable=True),
        )
    return error or RequestError("bad arguments to rms_norm")


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """out (T, d) = x (T, d) * rsqrt(mean(x^2, row) + eps) * weight (d,); float32 numpy arrays, C-contiguous.

    `out`, when given, is written and returned; it may be x itself (in place), else it must not overlap x.
    """
    # One fused check (numpy attribute reads cost ~50 ns each; decode makes 2 calls per layer per token).
    try:
        t, d = x.shape
        ok = (
            d > 0
            and x.dtype == _F32
            and weight.dtype == _F32
            and weight.shape == (d,)
            and x.flags.c_contiguous and weight.flags.c_contiguous
            and isinstance(eps, (float, int))
        )
        result = output_buffer(ok, out, t, d)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_norm(x, weight, eps, out)
    if t:
        _rms_norm(x, weight, result, t, d, float(eps))
    return result


def _bad_rope(x: object, cos: object, sin: object, start: object, rope_dim: object, interleaved: object) -> RequestError:
    """The first thing wrong with rotary_embedding_'s arguments (only built on the failure path)."""
    error = _first_error(bad_array("x", x, 3), bad_array("cos", cos, 2), bad_array("sin", sin, 2))
    if error is not None:
        return error
    (t, h, d), positions = x.shape, cos.shape[0]
    if not heads_side_by_side(x.strides, t, h, d):
        return RequestError(f"x (T, n_heads, D) must have strides (>= n_heads * D, D, 1) x 4 bytes, got {x.strides}: "
                            "heads side by side in each row")
    if not x.flags.writeable:
        return RequestError("x is read-only; it is rotated in place")
    if type(rope_dim) is not int or not 0 < rope_dim <= d or rope_dim % 2:
        return RequestError(f"rope_dim must be an even int in [2, D={d}], got {rope_dim!r}")
    error = _first_error(bad_contiguous("cos", cos, (positions, rope_dim // 2)),
                         bad_contiguous("sin", sin, (positions, rope_dim // 2)))
    if error is not None:
        return error
    if type(start) is not int or start < 0:
        return RequestError(f"start must be an int >= 0, got {start!r}")
    if start + t > positions:
        return RequestError(f"positions {start} .. {start + t - 1} are beyond the rotary tables ({positions} "
                            "positions); build them for a longer context")
    if not isinstance(interleaved, bool):
        return RequestError(f"interleaved must be a bool, got {type(interleaved).__name__}")
    return RequestError("bad arguments to rotary_embedding_")


def rotary_embedding_(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, start: int, rope_dim: int,
                      interleaved: bool) -> None:
    """Rotate x (T, n_heads, D) in place; row t holds position start + t.

    x: a writeable float32 numpy array with heads side by side (strides (row, D, 1) in floats, any row stride): e.g.
    the q or k columns of a fused (T, (n_heads + 2 n_kv) * D) qkv product viewed as (T, heads, D). cos, sin:
    (max_positions, rope_dim // 2) C-contiguous float32 tables (layers.RotaryEmbedding's). The first rope_dim dims of
    each head rotate, pairing (2i, 2i + 1) when interleaved (GGUF llama) else (i, i + rope_dim / 2) (neox):
    first' = first cos - second sin, second' = first sin + second cos. Dims from rope_dim on are untouched.
    """
    # One fused check (RoPE runs twice per layer per token).
    try:
        (t, h, d), strides = x.shape, x.strides
        positions, half = cos.shape
        ok = (
            x.dtype == _F32 and cos.dtype == _F32 and sin.dtype == _F32
            and heads_side_by_side(strides, t, h, d)
            and type(rope_dim) is int and 0 < rope_dim <= d and rope_dim == 2 * half
            and sin.shape == (positions, half)
            and type(start) is int and 0 <= start and start + t <= positions
            and isinstance(interleaved, bool)
            and x.flags.writeable and cos.flags.c_contiguous and sin.flags.c_contiguous
        )
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        raise _bad_rope(x, cos, sin, start, rope_dim, interleaved)
    if t and h:
        _rope(x, t, h, d, cos, sin, start, rope_dim, interleaved)  # strides: the view's own


def _bad_silu(gate_up: object, out: object) -> RequestError:
    """The first thing wrong with silu_mul's arguments (only built on the failure path)."""
    error = bad_array("gate_up", gate_up, 2)
    if error is None:
        t, cols = gate_up.shape
        error = _first_error(
            RequestError(f"gate_up must have an even, nonzero number of columns, got {cols}") if cols % 2 or not cols
            else None,
            bad_contiguous("gate_up", gate_up, (t, cols)),
            None if out is None else bad_array("out", out, 2) or bad_contiguous("out", out, (t, cols // 2),
                                                                                 writeable=True),
        )
    return error or RequestError("bad arguments to silu_mul")


def silu_mul(gate_up: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """out (T, F) = silu(gate) * up for gate_up (T, 2F) = [gate | up] side by side; float32 numpy arrays,
    C-contiguous.

    `out`, when given, is written and returned; it must not overlap gate_up.
    """
    try:
        t, cols = gate_up.shape
        f = cols // 2
        ok = cols > 0 and cols % 2 == 0 and gate_up.dtype == _F32 and gate_up.flags.c_contiguous
        result = output_buffer(ok, out, t, f)
    except (AttributeError, TypeError, ValueError):
        result = None
    if result is None:
        raise _bad_silu(gate_up, out)
    if t:
        _silu_mul(gate_up, result, t, f)
    return result
