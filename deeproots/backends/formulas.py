"""The formulas every architecture is built from: norms, rotary embeddings, attention, gated activations, and a
mixture of experts' routing and the sum of its experts' rows.

Activations of one sequence are (T, d_model) float32 numpy arrays; attention works per head as
(n_heads, T, head_dim). These are the reference forms (plain numpy, written as the formulas read): the
reference backend runs them, and every compiled kernel (cpu.py's primitives) is tested against them.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ..cache.kv import dequantize_rows
from ..config import YarnScaling
from ..errors import RequestError


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x (..., d) scaled to unit root-mean-square, then by `weight` (d,). The mean of squares is in float64."""
    scale = 1.0 / np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True) + eps)
    return x * scale.astype(np.float32) * weight


def yarn_frequencies(yarn: YarnScaling, rope_dim: int, theta: float) -> tuple[np.ndarray, float]:
    """YaRN's (inverse frequencies (rope_dim/2,) float64, cos/sin scale), as transformers' _compute_yarn_parameters:
    each frequency blends its interpolated (divided by the factor) and original value by where its wavelength falls
    between beta_fast and beta_slow rotations over the original context; cos and sin grow by 0.1 ln(factor) + 1."""
    def correction_dim(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` times
        return rope_dim * math.log(yarn.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rope_dim - 1)
    extrapolated = 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)  # (rope_dim/2,)
    ramp = np.clip((np.arange(rope_dim // 2) - low) / (high - low if high != low else 0.001), 0, 1)
    inv_freq = extrapolated / yarn.factor * ramp + extrapolated * (1 - ramp)
    return inv_freq, (0.1 * math.log(yarn.factor) + 1.0 if yarn.factor > 1 else 1.0)


class RotaryEmbedding:
    """RoPE with tables precomputed for every position the cache can hold.

    GGUF files converted from HF llama checkpoints have Q/K rows permuted so that rotation pairs
    are adjacent dimensions ("interleaved", llama.cpp's ROPE_TYPE_NORM); other architectures keep
    HF's layout, where dimension i pairs with i + rope_dim/2 ("neox").
    """

    def __init__(self, rope_dim: int, theta: float, max_positions: int, *, scale: float = 1.0,
                 style: Literal["interleaved", "neox"] = "interleaved", yarn: YarnScaling | None = None):
        self.rope_dim = rope_dim
        self.style = style
        inv_freq = 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)  # (rope_dim/2,)
        positions = np.arange(max_positions, dtype=np.float64) / scale
        magnitude = 1.0  # exact: without YaRN the tables are the plain ones, bit for bit
        if yarn is not None:
            inv_freq, magnitude = yarn_frequencies(yarn, rope_dim, theta)
        angles = np.outer(positions, inv_freq)  # (max_positions, rope_dim/2)
        self.cos = (np.cos(angles) * magnitude).astype(np.float32)
        self.sin = (np.sin(angles) * magnitude).astype(np.float32)

    def rotate_(self, x: np.ndarray, start: int) -> None:
        """Rotate x (T, n_heads, head_dim) in place; row t holds position start + t."""
        T = x.shape[0]
        cos = self.cos[start:start + T, None]  # (T, 1, rope_dim/2)
        sin = self.sin[start:start + T, None]
        rotated = x[..., :self.rope_dim]
        if self.style == "interleaved":
            first, second = rotated[..., 0::2], rotated[..., 1::2]
        else:
            first, second = np.split(rotated, 2, axis=-1)
        out_first = first * cos - second * sin
        out_second = first * sin + second * cos
        first[...] = out_first  # first and second are views of x: this writes x
        second[...] = out_second


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                     window: int | None = None, sinks: np.ndarray | None = None) -> np.ndarray:
    """Grouped-query attention of the T newest positions over all L cached ones: softmax(q k^T * scale) v.

    q (n_heads, T, D) float32; k, v (n_kv_heads, L, D) with L >= T; the queries are the last T positions, and
    query head h reads key/value head h // (n_heads / n_kv_heads). `window` > 0 is sliding-window attention:
    position p sees only keys p - window < j <= p (None or 0: all keys). A float16 cache is read in float32, a
    q8_0 cache's uint8 rows dequantized. `sinks` (n_heads,) float32 (gpt-oss): a learned logit per head that joins
    each row's softmax denominator with no value, so a row may attend to less than all of its keys. Returns
    (T, n_heads * D), the layout the output projection takes. The fast path uses kernels.cached_attention, which has
    the same signature and is tested against this.
    """
    if window is not None and (type(window) is not int or window < 0):
        raise RequestError(f"window must be None, 0 (no window) or a positive int of keys, got {window!r}")
    if k.dtype == np.uint8:
        k, v = dequantize_rows(k), dequantize_rows(v)
    n_heads, T, _ = q.shape
    L = k.shape[1]
    group = n_heads // k.shape[0]
    k = np.repeat(k.astype(np.float32), group, axis=0)  # (n_heads, L, D)
    v = np.repeat(v.astype(np.float32), group, axis=0)
    scores = (q @ k.transpose(0, 2, 1)) * np.float32(scale)  # (n_heads, T, L)
    # Query i sits at absolute position L - T + i and may see keys 0 .. L - T + i, the last `window` of them.
    positions = np.arange(L - T, L)[:, None]  # (T, 1)
    keys = np.arange(L)[None, :]  # (1, L)
    visible = keys <= positions
    if window:
        visible &= keys > positions - window
    scores = np.where(visible, scores, np.float32(-np.inf))
    if sinks is None:
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
    else:
        sink = sinks.astype(np.float32).reshape(n_heads, 1, 1)
        top = np.maximum(scores.max(axis=-1, keepdims=True), sink)  # (n_heads, T, 1)
        weights = np.exp(scores - top)
        weights /= weights.sum(axis=-1, keepdims=True) + np.exp(sink - top)
    attended = weights @ v  # (n_heads, T, D)
    return np.ascontiguousarray(attended.transpose(1, 0, 2)).reshape(T, -1)  # (T, n_heads * D)


def silu_mul(gate_up: np.ndarray) -> np.ndarray:
    """silu(gate) * up for gate_up (T, 2 * ffn_dim) holding [gate | up] side by side -> (T, ffn_dim)."""
    gate, up = np.split(gate_up, 2, axis=-1)
    with np.errstate(over="ignore"):  # exp(-gate) overflows to inf for gate < -88: silu is then -0, as it should be
        return gate / (1.0 + np.exp(-gate)) * up


def clamped_swiglu(gate_up: np.ndarray, alpha: float, limit: float) -> np.ndarray:
    """gpt-oss's gating for gate_up (T, 2 * ffn_dim) [gate | up]: gate clamped above and up on both sides at
    `limit`, then gate * sigmoid(alpha * gate) * (up + 1) -> (T, ffn_dim)."""
    gate, up = np.split(gate_up, 2, axis=-1)
    gate = np.minimum(gate, np.float32(limit))
    up = np.clip(up, np.float32(-limit), np.float32(limit))
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative gates: the product is then -0
        return gate / (1.0 + np.exp(np.float32(-alpha) * gate)) * (up + np.float32(1))


def gelu_mul(gate_up: np.ndarray) -> np.ndarray:
    """gelu(gate) * up (tanh approximation, as Gemma) for gate_up (T, 2 * ffn_dim) -> (T, ffn_dim)."""
    gate, up = np.split(gate_up, 2, axis=-1)
    inner = np.float32(math.sqrt(2.0 / math.pi)) * (gate + np.float32(0.044715) * gate * gate * gate)
    return np.float32(0.5) * gate * (1.0 + np.tanh(inner)) * up


def route(logits: np.ndarray, top_k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (N, n_experts) -> (expert ids (N, top_k), weights (N, top_k)) in float32.

    softmax over all experts, the top_k most probable (ties to the lower id), their probabilities rescaled to
    sum to 1 when the family does (`normalize`).
    """
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)  # (N, n_experts)
    ids = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]  # (N, top_k), most probable first
    weights = probabilities[np.arange(len(ids))[:, None], ids]  # (N, top_k): each row's chosen probabilities
    if normalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return ids, weights


def combine_experts(rows, weights, order: np.ndarray):
    """A mixture's output (N, d): each token's k expert rows times their weights (N, k), summed in the token's own
    slot order (the same bits whoever shares its experts). rows (N * k, d): product row r holds the (token, slot)
    pair order[r] (pair t * k + s), as the products grouped them by expert. numpy or torch rows and weights alike."""
    n, k = weights.shape
    weighted = rows * weights.reshape(-1)[order, None]  # (N * k, d)
    by_pair = weighted[np.argsort(order)]  # back in (token, slot) order (index arrays: numpy or torch rows)
    return by_pair.reshape(n, k, -1).sum(axis=1)  # (N, d), slot after slot
