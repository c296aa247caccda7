"""A mixture of experts' two primitives around its products, one compiled call each (csrc/elementwise.c):

    ids, weights = route(logits, top_k, normalize)   # router logits (N, E) -> (N, top_k) int64, (N, top_k) float32
    out = combine_experts(rows, weights, order)      # expert rows (N * top_k, d) -> (N, d)

They compute backends/formulas.py's `route` and `combine_experts`, which take 7 and 5 array operations a layer. Between
a decode step's expert products, which stream megabytes through the caches, each of those operations ran at ~4-30 us
(timed with line_profiler in a decode of OLMoE: ~160 us a layer for both, 5% of the step); a call here costs a few.

Error bounds (tests/kernels/test_mixture.py):
  route            ids: the top_k largest logits, largest first, the lower id first on ties (softmax is monotonic, so
                   these are the most probable experts; the formula sorts the rounded probabilities instead, which
                   can only differ where two of them round to one float32). weights: within 1u (u = 2^-24) of the
                   exact softmax of the float32 logits (over all E, or over the chosen top_k with `normalize`):
                   computed in float64 and rounded once.
  combine_experts  the same bits as the formula: each row times its weight rounded to float32, then the slots added
                   in order, without fused multiply-adds.
A row's result depends only on that row, so a token's bits do not depend on the batch it came in.
"""

import numpy as np

from ..errors import RequestError
from . import _cpu
from .outputs import F32 as _F32, bad_array, bad_contiguous

_route, _combine = _cpu.route, _cpu.combine_experts  # looked up once: decode calls each once a layer
_I64 = np.dtype(np.int64)


def route(logits: np.ndarray, top_k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (N, E) float32, C-contiguous -> (expert ids (N, top_k) int64, most probable first; their softmax
    probabilities (N, top_k) float32, rescaled to sum to 1 when `normalize`)."""
    error = bad_array("logits", logits, 2) or bad_contiguous("logits", logits, logits.shape)
    if error is None and (type(top_k) is not int or not 1 <= top_k <= logits.shape[1]):
        error = RequestError(f"top_k must be an int in [1, {logits.shape[1]}] (the experts), got {top_k!r}")
    if error is None and not isinstance(normalize, bool):
        error = RequestError(f"normalize must be a bool, got {type(normalize).__name__}")
    if error is not None:
        raise error
    n, experts = logits.shape
    ids, weights = np.empty((n, top_k), _I64), np.empty((n, top_k), _F32)
    _route(logits, ids, weights, n, experts, top_k, int(normalize))
    return ids, weights


def combine_experts(rows: np.ndarray, weights: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A mixture's output (N, d): for each token, the weighted sum over its k slots, in slot order, of its experts'
    rows. rows (N * k, d) float32: product row r holds the (token, slot) pair order[r] (pair t * k + s); weights
    (N, k) float32; order (N * k,) int64, a permutation; all C-contiguous."""
    error = bad_array("weights", weights, 2) or bad_contiguous("weights", weights, weights.shape)
    if error is None:
        n, k = weights.shape
        error = ((RequestError("weights must have at least one slot per token") if k == 0 else None)
                 or bad_array("rows", rows, 2) or bad_contiguous("rows", rows, (n * k, rows.shape[1]))
                 or (RequestError("rows must have at least one column") if rows.shape[1] == 0 else None)
                 or bad_array("order", order, 1, _I64) or bad_contiguous("order", order, (n * k,)))
    if error is not None:
        raise error
    out = np.empty((n, rows.shape[1]), _F32)
    _combine(rows, weights, order, out, n, k, rows.shape[1])  # the C entry checks that order is a permutation
    return out
