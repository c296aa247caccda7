"""ggml's searches for a sub-block's scale (and min), vectorized over many sub-blocks at once.

Each tries a few candidate inverse scales around the plain max-based one, fits the best scale
(and min) for the integers each candidate gives by weighted least squares, and keeps the one
with the smallest weighted error. Same float32 operations as ggml's `make_qx_quants` (with
rmse_type 1) and `make_qkx2_quants`; sums run left to right as in the C loops.
"""

from __future__ import annotations

import numpy as np

from .base import signed_absmax

GROUP_MAX_EPS = np.float32(1e-15)  # ggml treats a sub-block with a smaller max |x| as all zero


def sum_in_order(terms: np.ndarray) -> np.ndarray:
    """Sum over the last axis strictly left to right, like a C loop (np.sum pairs terms up)."""
    return np.cumsum(terms, axis=-1, dtype=np.float32)[..., -1]


def divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0; overflow gives +-inf quietly
    (callers clip it, or drop the candidate it belongs to)."""
    with np.errstate(over="ignore"):
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def symmetric_scale(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type=1, NULL): x (m, n) -> scale (m,), L (m, n).

    x ~= scale * (L - nmax) with L in 0..2*nmax-1, fitted with weights x**2.
    """
    weights = x * x
    largest = signed_absmax(x)[:, 0]
    all_zero = np.abs(largest) < GROUP_MAX_EPS
    largest = np.where(all_zero, np.float32(1), largest)

    def fit(inverse_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        levels = np.clip(np.rint(inverse_scale[:, np.newaxis] * x), -nmax, nmax - 1)
        return levels, sum_in_order(weights * x * levels), sum_in_order(weights * levels * levels)

    levels, sum_lx, sum_l2 = fit(np.float32(-nmax) / largest)
    scale = divide_or_zero(sum_lx, sum_l2)
    best = scale * sum_lx
    for step in range(-9, 10):
        if step == 0:
            continue
        candidate, cand_lx, cand_l2 = fit(-(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / largest)
        # compare sum_lx**2 / sum_l2 (the error it removes) without dividing
        better = (cand_l2 > 0) & (cand_lx * cand_lx > best * cand_l2)
        levels = np.where(better[:, np.newaxis], candidate, levels)
        scale = np.where(better, divide_or_zero(cand_lx, cand_l2), scale)
        best = np.where(better, scale * cand_lx, best)
    levels = np.where(all_zero[:, np.newaxis], 0, levels + nmax).astype(np.uint8)
    return np.where(all_zero, np.float32(0), scale), levels


def scale_and_min(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants(..., use_mad=false): x, weights (m, n) -> scale, min (m,), L (m, n).

    x ~= scale * L - min with L in 0..nmax and min >= 0, minimizing sum(weights * error**2).
    """
    # ggml's loop keeps the first of equal minima: of 0.0 and -0.0, whichever comes first (x.min() may give either)
    low = np.take_along_axis(x, x.argmin(axis=-1)[:, np.newaxis], axis=-1)[:, 0]
    low = np.where(low > 0, np.float32(0), low)  # not np.minimum: ggml keeps a -0.0
    high = x.max(axis=-1)
    # the inverse scales tried: nmax / span first, then (rmin + rdelta * step + nmax) / span
    numerators = [
        np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax) for step in range(nstep + 1)
    ]
    # a span so tiny that an inverse scale overflows (undefined in ggml's C) counts as flat, like span 0
    with np.errstate(over="ignore", divide="ignore"):
        flat = ~np.isfinite(max(numerators + [np.float32(nmax)]) / (high - low))
    sum_w = sum_in_order(weights)
    sum_x = sum_in_order(weights * x)

    def levels_for(inverse_scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(inverse_scale[:, np.newaxis] * (x - offset[:, np.newaxis])), 0, nmax)

    def error(scale: np.ndarray, offset: np.ndarray, levels: np.ndarray) -> np.ndarray:
        diff = scale[:, np.newaxis] * levels + offset[:, np.newaxis] - x
        return sum_in_order(weights * (diff * diff))

    offset = low  # the value level 0 stands for (ggml's `min`, so -min), updated as fits improve
    inverse_scale = np.float32(nmax) / np.where(flat, np.float32(1), high - low)
    scale = np.float32(1) / inverse_scale
    levels = levels_for(inverse_scale, offset)
    best_error = error(scale, offset, levels)
    for numerator in numerators:
        # as in ggml, each candidate starts from the best offset so far, not the original minimum
        candidate = levels_for(numerator / np.where(flat, np.float32(1), high - offset), offset)
        weighted = weights * candidate
        sum_l, sum_l2, sum_xl = sum_in_order(weighted), sum_in_order(weighted * candidate), sum_in_order(weighted * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        cand_scale = divide_or_zero(sum_w * sum_xl - sum_x * sum_l, det)
        cand_offset = divide_or_zero(sum_l2 * sum_x - sum_l * sum_xl, det)
        # level 0 may not stand for a positive value: pin it to 0 and refit the scale alone
        pinned = cand_offset > 0
        cand_scale = np.where(pinned, divide_or_zero(sum_xl, sum_l2), cand_scale)
        cand_offset = np.where(pinned, np.float32(0), cand_offset)
        # an overflowed fit has an infinite error in C, so it never wins; zero it to keep the maths quiet
        usable = (det > 0) & np.isfinite(cand_scale) & np.isfinite(cand_offset)
        cand_scale = np.where(usable, cand_scale, np.float32(0))
        cand_offset = np.where(usable, cand_offset, np.float32(0))
        cand_error = error(cand_scale, cand_offset, candidate)
        better = usable & (cand_error < best_error)
        levels = np.where(better[:, np.newaxis], candidate, levels)
        best_error = np.where(better, cand_error, best_error)
        scale = np.where(better, cand_scale, scale)
        offset = np.where(better, cand_offset, offset)
    scale = np.where(flat, np.float32(0), scale)
    levels = np.where(flat[:, np.newaxis], 0, levels).astype(np.uint8)
    return scale, -offset, levels
