"""Sampling: pure functions from (logits, params, rng state) to the next token, over numpy arrays.

The order of operations follows vLLM: penalties and logit bias on the raw logits, then
temperature, then the top-k / top-p / min-p filters on the tempered distribution, then a draw.
Temperature 0 is greedy decoding. An optional `allowed` mask (constrained decoding) removes
every other token after the logit bias, so no setting can sample outside it.

`sample_batch` samples many sequences at once (the engine's path): per-row work only where a row needs it
(penalties, bias, masks), then one argmax for the greedy rows and, for the others, one temperature divide and
the filters per group of rows sharing them. Each row keeps its own generator and every operation is row by
row, so a sequence gets the same tokens alone or in any batch; the single-sequence sampler is the same code on
a batch of one.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import RequestError

@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1.0 disables
    min_p: float = 0.05  # 0.0 disables
    repeat_penalty: float = 1.0  # llama.cpp style: divides positive logits of seen tokens; 1.0 disables
    presence_penalty: float = 0.0  # OpenAI style: subtracted once from every seen token
    frequency_penalty: float = 0.0  # OpenAI style: subtracted once per occurrence
    penalty_window: int = 64  # how many recent tokens the penalties look at
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature, 0.0, 100.0),
            ("top_k", self.top_k, 0, 1 << 31),
            ("top_p", self.top_p, 0.0, 1.0),
            ("min_p", self.min_p, 0.0, 1.0),
            ("repeat_penalty", self.repeat_penalty, 0.0, 100.0),
            ("presence_penalty", self.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", self.frequency_penalty, -2.0, 2.0),
            ("penalty_window", self.penalty_window, 0, 1 << 31),
        ]
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RequestError(f"{name} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise RequestError(f"{name} must be between {low} and {high}, got {value}")
        if self.repeat_penalty == 0.0:
            raise RequestError("repeat_penalty must be positive (1.0 disables it)")
        if self.top_p == 0.0:
            raise RequestError("top_p must be greater than 0 (1.0 disables it)")
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise RequestError(f"logit_bias keys must be token ids, got {token!r}")
            if not isinstance(bias, (int, float)) or not -100.0 <= bias <= 100.0:
                raise RequestError(f"logit_bias values must be between -100 and 100, got {bias!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_penalties(logits: np.ndarray, history: Sequence[int], params: SamplingParams) -> np.ndarray:
    """Penalize tokens seen in the last `penalty_window` tokens of `history`; returns new logits."""
    recent = history[-params.penalty_window:] if params.penalty_window else []
    if not recent or (params.repeat_penalty == 1.0 and params.presence_penalty == 0.0
                      and params.frequency_penalty == 0.0):
        return logits
    tokens, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    seen = logits[tokens]
    if params.repeat_penalty != 1.0:
        seen = np.where(seen > 0, seen / params.repeat_penalty, seen * params.repeat_penalty)
    seen = seen - params.presence_penalty - params.frequency_penalty * counts.astype(logits.dtype)
    out = logits.copy()
    out[tokens] = seen
    return out


def apply_logit_bias(logits: np.ndarray, bias: Mapping[int, float]) -> np.ndarray:
    if not bias:
        return logits
    vocab = logits.shape[0]
    out_of_range = [token for token in bias if token >= vocab]
    if out_of_range:
        raise RequestError(f"logit_bias names token ids outside the vocabulary (size {vocab}): {out_of_range[:5]}")
    out = logits.copy()
    out[list(bias)] += np.asarray(list(bias.values()), dtype=logits.dtype)
    return out


def apply_token_mask(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Logits with every token outside `allowed` (vocab,) bool set to -inf."""
    if allowed.shape != logits.shape or allowed.dtype != np.bool_:
        raise RequestError(f"a token mask of shape {tuple(allowed.shape)} and type {allowed.dtype} does not fit "
                           f"logits {tuple(logits.shape)} (it must be bool)")
    if not allowed.any():
        raise RequestError("the token mask allows no token at all: the constraint cannot be continued")
    return np.where(allowed, logits, np.float32(-np.inf))


def logprobs_batch(logits: np.ndarray, tokens: Sequence[int],
                   top_n: Sequence[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each row of logits (B, vocab): the log-probability of tokens[row] under the model's own distribution
    softmax(logits[row]), and the top_n[row] most likely tokens with theirs (before penalties, temperature or
    masks, as OpenAI reports them). One log-softmax for the whole batch; each row's result is the same alone."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(-1, keepdims=True)  # (B, vocab)
    log_total = np.log(np.exp(shifted).sum(-1, keepdims=True, dtype=np.float64)).astype(np.float32)  # (B, 1)
    logprobs = shifted - log_total  # (B, vocab) float32
    chosen = logprobs[np.arange(len(tokens)), np.asarray(tokens, dtype=np.int64)].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in tokens]
    for n in sorted(set(top_n) - {0}):  # rows asking for the same number share one search
        rows = [row for row, wanted in enumerate(top_n) if wanted == n]
        values, ids = _top_candidates(logprobs[rows], min(n, logprobs.shape[-1]))
        for row, row_ids, row_values in zip(rows, ids.tolist(), values.tolist()):
            tops[row] = list(zip(row_ids, row_values))
    return list(zip(chosen, tops))


def token_logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """logprobs_batch for one row logits (vocab,)."""
    return logprobs_batch(logits[None], [token], [top_n])[0]


def filter_logits(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Set to -inf every token outside the top-k, then outside the top-p nucleus, then under min_p x the top prob.

    logits: (vocab,) or (B, vocab), every row filtered alike; returns a new array of the same shape. Each filter
    sees the distribution renormalized over what the previous ones kept. The work is over a few candidates
    (`_filter_candidates`), never a sort of the whole vocabulary.
    """
    if top_k <= 0 and top_p >= 1.0:
        if min_p <= 0.0:
            return logits.copy()
        # min_p alone compares each probability with the top one: no candidates needed.
        return np.where(np.exp(logits - logits.max(-1, keepdims=True)) < min_p, np.float32(-np.inf), logits)
    values, ids = _filter_candidates(logits, top_k, top_p, min_p)
    out = np.full_like(logits, -np.inf)
    np.put_along_axis(out, ids, values, axis=-1)
    return out


def _filter_candidates(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """filter_logits for top_k > 0 or top_p < 1, as (values, ids) of the candidates, (..., k) each, best first,
    with -inf where a filter removed one; every token that is not a candidate is filtered out.

    The candidates are the top-k themselves, or for top-p alone a top-k that grows until it holds the nucleus
    in every row (a row's result does not depend on how far it grew).
    """
    vocab = logits.shape[-1]
    k = min(top_k, vocab) if top_k > 0 else min(64, vocab)
    while True:
        values, ids = _top_candidates(logits, k)  # (..., k) descending
        if top_p >= 1.0:
            break
        # The probabilities of the candidates, renormalized over the top-k (or, without top-k, the vocabulary),
        # in float64: the nucleus edge of a long tail sits among tokens of ~1e-7 each.
        top = values[..., :1]
        norm = np.exp((values if top_k > 0 else logits) - top).sum(-1, keepdims=True, dtype=np.float64)
        probs = np.exp(values - top) / norm  # (..., k) float64
        mass = probs.cumsum(-1)
        if top_k > 0 or k == vocab or bool((mass[..., -1] >= top_p).all()):
            break  # every token past the candidates has mass >= top_p before it: outside the nucleus
        k = min(vocab, k * 8)
    if top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        mass_before = mass - probs
        values[..., 1:][mass_before[..., 1:] >= top_p] = -np.inf
    if min_p > 0.0:
        values[np.exp(values - values[..., :1]) < min_p] = -np.inf
    return values, ids


def _top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values of each row of logits (..., vocab) and their token ids, (..., k) each, best first.

    Equal values come in token id order (torch.topk left their order unspecified), so the result is the same
    for a row alone or in a batch and on any machine.
    """
    rows = logits.reshape(-1, logits.shape[-1])  # (R, vocab)
    ids = np.stack([_top_ids(row, k) for row in rows])  # (R, k) ascending ids
    values = np.take_along_axis(rows, ids, axis=-1)
    rank = np.argsort(-values, axis=-1, kind="stable")  # descending; ties keep ascending ids
    shape = logits.shape[:-1] + (k,)
    return np.take_along_axis(values, rank, -1).reshape(shape), np.take_along_axis(ids, rank, -1).reshape(shape)


def _top_ids(row: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest values of row (vocab,), ascending (which of equal values at the k-th place is
    taken is argpartition's choice, the same for the same row).

    An argpartition of the whole vocabulary costs ~0.4 ms; it runs over a few candidates instead: the k-th
    largest of the maxima of k or more blocks is at most the k-th largest value (those maxima are k values of
    the row), so every one of the top k is at least that.
    """
    vocab = row.shape[0]
    size = vocab // (8 * k)  # 8k blocks of `size` tokens: few values reach the threshold
    if size > 1:
        maxima = row[:vocab // size * size].reshape(-1, size).max(-1)  # (blocks,)
        threshold = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
        ids = np.flatnonzero(row >= threshold)
        return np.sort(ids[np.argpartition(row[ids], len(ids) - k)[len(ids) - k:]])
    return np.sort(np.argpartition(row, vocab - k)[vocab - k:])


class Sampler:
    """One sequence's sampler: its params and its own generator, so the same seed gives the same tokens.

    Called as sampler(logits (vocab,), history, allowed=None) -> token; `sample_batch` draws for many sequences
    at once and gives each exactly what it would get alone.
    """

    __slots__ = ("params", "generator")

    def __init__(self, params: SamplingParams):
        self.params = params
        # Without a seed, PCG64 seeds itself from the OS's entropy: its own stream, no global state touched.
        self.generator = np.random.Generator(np.random.PCG64(params.seed))

    def __call__(self, logits: np.ndarray, history: Sequence[int], allowed: np.ndarray | None = None) -> int:
        return sample_batch(logits[None], [self], [history], [allowed])[0]

    def uniform(self) -> float:
        """The next draw of this sequence's generator, in [0, 1)."""
        return float(self.generator.random())


def make_sampler(params: SamplingParams) -> Sampler:
    """A sampler closed over its own generator: the same seed gives the same tokens."""
    return Sampler(params)


def prepare_logits(logits: np.ndarray, history: Sequence[int], params: SamplingParams,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """Penalties, logit bias and the constraint mask on one row (vocab,): the same array when none applies."""
    logits = apply_penalties(logits, history, params)
    logits = apply_logit_bias(logits, params.logit_bias)
    if allowed is not None:
        logits = apply_token_mask(logits, allowed)
    return logits


def sample_batch(logits: np.ndarray, samplers: Sequence[Sampler], histories: Sequence[Sequence[int]],
                 allowed: Sequence[np.ndarray | None]) -> list[int]:
    """One token per row of logits (B, vocab), row i sampled with samplers[i] (penalties over histories[i], the
    optional mask allowed[i]); a RequestError for any bad row. The same tokens as sampling each row alone."""
    logits = np.asarray(logits, dtype=np.float32)
    rows = [logits[i] for i in range(len(samplers))]
    prepared = [prepare_logits(row, history, sampler.params, mask)
                for row, sampler, history, mask in zip(rows, samplers, histories, allowed)]
    if any(new is not old for new, old in zip(prepared, rows)):
        logits = np.stack(prepared)
    return draw_batch(logits, samplers)


def draw_batch(logits: np.ndarray, samplers: Sequence[Sampler]) -> list[int]:
    """Tokens for logits (B, vocab) already penalized/biased/masked: greedy rows by one argmax, the others by
    temperature, the top-k / top-p / min-p filters (rows with the same filters together) and one draw from each
    row's own generator (inverse CDF: the first token whose cumulative weight passes u x the row's total).

    Every operation works row by row, so a row's token does not depend on the other rows of the batch. The
    vocabulary-sized intermediates live in this thread's reused buffers: fresh megabytes every step cost page
    faults (measured with torch: a float64 cumsum over 8 x 49k went from 0.4 ms to 3 ms in new memory).
    """
    tokens = [0] * len(samplers)
    greedy = [i for i, sampler in enumerate(samplers) if sampler.params.greedy]
    sampled = [i for i, sampler in enumerate(samplers) if not sampler.params.greedy]
    if greedy:
        chosen = (logits if len(greedy) == len(samplers) else logits[greedy]).argmax(-1)
        for i, token in zip(greedy, chosen.tolist()):
            tokens[i] = token
    if not sampled:
        return tokens
    params = [samplers[i].params for i in sampled]
    temperatures = np.asarray([p.temperature for p in params], dtype=np.float32)[:, None]  # (S, 1)
    tempered = _buffer("tempered", (len(sampled), logits.shape[-1]), np.float32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # overflowing rows are handled just below
        np.divide(logits if len(sampled) == len(samplers) else logits[sampled], temperatures, out=tempered)
    # A temperature so small that logits / temperature overflows float32 (1e-38, say) leaves a row without a
    # finite maximum, so no distribution: that row is greedy, the limit its temperature tends to.
    overflowed = ~np.isfinite(tempered.max(-1))  # (S,)
    groups: dict[tuple[int, float, float], list[int]] = {}
    for row, p in enumerate(params):
        if overflowed[row]:
            tokens[sampled[row]] = int(logits[sampled[row]].argmax())
        else:
            groups.setdefault((p.top_k, p.top_p, p.min_p), []).append(row)
    for (top_k, top_p, min_p), rows in groups.items():
        if top_k > 0 or top_p < 1.0:
            values, ids = _filter_candidates(tempered[rows], top_k, top_p, min_p)  # (R, k) each
            for row, row_values, row_ids in zip(rows, values, ids):
                tokens[sampled[row]] = _draw_candidate(row_values, row_ids, samplers[sampled[row]].uniform())
        else:
            for row in rows:
                tokens[sampled[row]] = _draw(tempered[row], min_p, samplers[sampled[row]].uniform())
    return tokens


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The probabilities (vocab,) float64 that draw_batch draws one row from: `logits` (vocab,) already prepared
    (prepare_logits), then temperature and the top-k / top-p / min-p filters as draw_batch applies them. Greedy
    (or a temperature that overflows float32) is a point mass on the argmax. Speculative decoding's rejection
    rule reads p(x) from it (speculative.py)."""
    logits = np.asarray(logits, dtype=np.float32)
    probs = np.zeros(logits.shape[0], dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        tempered = logits / np.float32(params.temperature) if not params.greedy else None
    if tempered is None or not np.isfinite(tempered.max()):
        probs[int(logits.argmax())] = 1.0
        return probs
    if params.top_k > 0 or params.top_p < 1.0:
        values, ids = _filter_candidates(tempered[None], params.top_k, params.top_p, params.min_p)
        probs[ids[0]] = np.exp(values[0] - values[0, 0])
    else:
        probs[:] = np.exp(tempered - tempered.max())
        if params.min_p > 0.0:
            probs[probs < params.min_p] = 0.0
    return probs / probs.sum()


def draw_from(weights: np.ndarray, u: float) -> int:
    """The inverse-CDF draw from weights (vocab,) >= 0, not necessarily normalized, for the uniform u."""
    return _inverse_cdf(weights, u)


def _draw(logits: np.ndarray, min_p: float, u: float) -> int:
    """The inverse-CDF draw from softmax(logits (vocab,)) for the uniform u, after min_p alone (filter_logits'
    test, on the very weights it would leave: exp(logit - max) is each probability over the top one)."""
    weights = _buffer("weights", logits.shape, np.float32)
    np.exp(np.subtract(logits, logits.max(), out=weights), out=weights)  # unnormalized; -inf -> exactly 0
    if min_p > 0.0:
        weights[weights < min_p] = 0.0
    return _inverse_cdf(weights, u)


def _draw_candidate(values: np.ndarray, ids: np.ndarray, u: float) -> int:
    """`_draw` over the whole row, given its candidates' values (k,), best first, and token ids (k,), every
    other token being -inf: the same token, as the others weigh exactly 0 and leave the float64 sums as they are.
    """
    by_id = np.argsort(ids)  # the vocabulary's order, as the full row's cumulative sum runs
    weights = np.exp(values[by_id] - values[0])  # the top candidate is the row's maximum
    return int(ids[by_id][_inverse_cdf(weights, u)])


def _inverse_cdf(weights: np.ndarray, u: float) -> int:
    """The index of the first weight (n,) whose cumulative sum, in float64, passes u x the total.

    Over a whole vocabulary a running sum is the slow part (~0.2 ms for 49k values: each step waits for the one
    before). So it runs over the totals of blocks of _BLOCK weights first, then inside the one block the target
    falls in: the same inverse CDF, with the weights added in another order (float64 either way).
    """
    if len(weights) <= 4 * _BLOCK:
        return _first_past(weights, u * float(weights.sum(dtype=np.float64)), 0.0)
    whole = len(weights) // _BLOCK * _BLOCK
    totals = weights[:whole].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)  # (blocks,)
    if whole < len(weights):
        totals = np.append(totals, weights[whole:].sum(dtype=np.float64))
    before = np.cumsum(totals)  # (blocks,): the weight up to the end of each block
    target = u * before[-1]
    block = min(int(np.searchsorted(before, target, side="right")), len(totals) - 1)
    while not totals[block]:  # u x total rounded up to the total: back to the last block with any weight
        block -= 1
    start = block * _BLOCK
    return start + _first_past(weights[start:start + _BLOCK], target, float(before[block] - totals[block]))


def _first_past(weights: np.ndarray, target: float, offset: float) -> int:
    """The first index whose running sum of weights (n,), from `offset`, exceeds target (side="right": a zero
    weight never does); the last with any weight when rounding leaves the target at or past the end."""
    cdf = np.cumsum(weights, dtype=np.float64) + offset
    index = int(np.searchsorted(cdf, target, side="right"))
    return index if index < len(weights) else int(np.flatnonzero(weights)[-1])


_BLOCK = 256  # weights per block of _inverse_cdf's two-level sum


_local = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A scratch array of `shape`, this thread's own, reused from call to call (grown when too small)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    size = math.prod(shape)
    buffer = buffers.get(name)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = buffers[name] = np.empty(size, dtype=dtype)
    return buffer[:size].reshape(shape)
