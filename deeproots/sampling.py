"""Sampling: pure functions from (logits, params, rng state) to the next token.

The order of operations follows vLLM: penalties and logit bias on the raw logits, then
temperature, then the top-k / top-p / min-p filters on the tempered distribution, then a draw.
Temperature 0 is greedy decoding. An optional `allowed` mask (constrained decoding) removes
every other token after the logit bias, so no setting can sample outside it.

`sample_batch` samples many sequences at once (the engine's path): per-row work only where a row needs it
(penalties, bias, masks), then one argmax for the greedy rows and, for the others, one temperature divide,
the filters per group of rows sharing them, one exp and one cumulative sum. Each row keeps its own
generator and every operation is row by row, so a sequence gets the same tokens alone or in any batch; the
single-sequence sampler is the same code on a batch of one.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

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


def apply_penalties(logits: torch.Tensor, history: Sequence[int], params: SamplingParams) -> torch.Tensor:
    """Penalize tokens seen in the last `penalty_window` tokens of `history`; returns new logits."""
    recent = history[-params.penalty_window:] if params.penalty_window else []
    if not recent or (params.repeat_penalty == 1.0 and params.presence_penalty == 0.0
                      and params.frequency_penalty == 0.0):
        return logits
    tokens, counts = torch.tensor(recent, dtype=torch.long).unique(return_counts=True)
    seen = logits[tokens]
    if params.repeat_penalty != 1.0:
        seen = torch.where(seen > 0, seen / params.repeat_penalty, seen * params.repeat_penalty)
    seen = seen - params.presence_penalty - params.frequency_penalty * counts.to(logits.dtype)
    out = logits.clone()
    out[tokens] = seen
    return out


def apply_logit_bias(logits: torch.Tensor, bias: Mapping[int, float]) -> torch.Tensor:
    if not bias:
        return logits
    vocab = logits.shape[0]
    out_of_range = [token for token in bias if token >= vocab]
    if out_of_range:
        raise RequestError(f"logit_bias names token ids outside the vocabulary (size {vocab}): {out_of_range[:5]}")
    out = logits.clone()
    out[list(bias)] += torch.tensor(list(bias.values()), dtype=logits.dtype)
    return out


def apply_token_mask(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits with every token outside `allowed` (vocab,) bool set to -inf."""
    if allowed.shape != logits.shape:
        raise RequestError(f"a token mask of shape {tuple(allowed.shape)} does not fit logits {tuple(logits.shape)}")
    if not bool(allowed.any()):
        raise RequestError("the token mask allows no token at all: the constraint cannot be continued")
    return logits.masked_fill(~allowed, float("-inf"))


def logprobs_batch(logits: torch.Tensor, tokens: Sequence[int],
                   top_n: Sequence[int]) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each row of logits (B, vocab): the log-probability of tokens[row] under the model's own distribution
    softmax(logits[row]), and the top_n[row] most likely tokens with theirs (before penalties, temperature or
    masks, as OpenAI reports them). One log-softmax for the whole batch; each row's result is the same alone."""
    logprobs = logits.float().log_softmax(-1)  # (B, vocab)
    chosen = logprobs.gather(1, torch.tensor(tokens, dtype=torch.long)[:, None])[:, 0].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in tokens]
    for n in sorted(set(top_n) - {0}):  # rows asking for the same number share one topk
        rows = [row for row, wanted in enumerate(top_n) if wanted == n]
        values, ids = logprobs[rows].topk(min(n, logprobs.shape[-1]), dim=-1)
        for row, row_ids, row_values in zip(rows, ids.tolist(), values.tolist()):
            tops[row] = list(zip(row_ids, row_values))
    return list(zip(chosen, tops))


def token_logprobs(logits: torch.Tensor, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """logprobs_batch for one row logits (vocab,)."""
    return logprobs_batch(logits[None], [token], [top_n])[0]


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Set to -inf every token outside the top-k, then outside the top-p nucleus, then under min_p x the top prob.

    logits: (vocab,) or (B, vocab), every row filtered alike; returns a new tensor of the same shape. Each filter
    sees the distribution renormalized over what the previous ones kept. The work is over the few candidates a
    `topk` returns, never a sort of the whole vocabulary: the top-k themselves, or for top-p alone a top-k that
    grows until it holds the nucleus in every row (a row's result does not depend on how far it grew).
    """
    vocab = logits.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        if min_p <= 0.0:
            return logits.clone()
        # min_p alone compares each probability with the top one: no candidates needed.
        return logits.masked_fill((logits - logits.amax(-1, keepdim=True)).exp() < min_p, float("-inf"))
    k = min(top_k, vocab) if top_k > 0 else min(64, vocab)
    while True:
        values, order = logits.topk(k, dim=-1)  # (..., k) descending
        if top_p >= 1.0:
            break
        # The probabilities of the candidates, renormalized over the top-k (or, without top-k, the vocabulary),
        # in float64: the nucleus edge of a long tail sits among tokens of ~1e-7 each.
        top = values[..., :1]
        norm = ((values if top_k > 0 else logits) - top).exp().sum(-1, keepdim=True, dtype=torch.float64)
        probs = (values - top).exp() / norm  # (..., k) float64
        mass = probs.cumsum(-1)
        if top_k > 0 or k == vocab or bool((mass[..., -1] >= top_p).all()):
            break  # every token past the candidates has mass >= top_p before it: outside the nucleus
        k = min(vocab, k * 8)
    values = values.clone()
    if top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        mass_before = mass - probs
        values[..., 1:][mass_before[..., 1:] >= top_p] = float("-inf")
    if min_p > 0.0:
        values[(values - values[..., :1]).exp() < min_p] = float("-inf")
    return torch.full_like(logits, float("-inf")).scatter_(-1, order, values)


class Sampler:
    """One sequence's sampler: its params and its own generator, so the same seed gives the same tokens.

    Called as sampler(logits (vocab,), history, allowed=None) -> token; `sample_batch` draws for many sequences
    at once and gives each exactly what it would get alone.
    """

    __slots__ = ("params", "generator")

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            # Its own non-deterministic seed. (torch.seed() would reseed the global generators too, and its CUDA
            # hook formats the whole call stack, reading every caller's source file into linecache.)
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, history: Sequence[int], allowed: torch.Tensor | None = None) -> int:
        return sample_batch(logits[None], [self], [history], [allowed])[0]

    def uniform(self) -> float:
        """The next draw of this sequence's generator, in [0, 1)."""
        return float(torch.rand(1, generator=self.generator, dtype=torch.float64))


def make_sampler(params: SamplingParams) -> Sampler:
    """A sampler closed over its own generator: the same seed gives the same tokens."""
    return Sampler(params)


def prepare_logits(logits: torch.Tensor, history: Sequence[int], params: SamplingParams,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Penalties, logit bias and the constraint mask on one row (vocab,): the same tensor when none applies."""
    logits = apply_penalties(logits, history, params)
    logits = apply_logit_bias(logits, params.logit_bias)
    if allowed is not None:
        logits = apply_token_mask(logits, allowed)
    return logits


def sample_batch(logits: torch.Tensor, samplers: Sequence[Sampler], histories: Sequence[Sequence[int]],
                 allowed: Sequence[torch.Tensor | None]) -> list[int]:
    """One token per row of logits (B, vocab), row i sampled with samplers[i] (penalties over histories[i], the
    optional mask allowed[i]); a RequestError for any bad row. The same tokens as sampling each row alone."""
    with one_torch_thread():
        logits = logits.float()
        rows = [logits[i] for i in range(len(samplers))]
        prepared = [prepare_logits(row, history, sampler.params, mask)
                    for row, sampler, history, mask in zip(rows, samplers, histories, allowed)]
        if any(new is not old for new, old in zip(prepared, rows)):
            logits = torch.stack(prepared)
        return draw_batch(logits, samplers)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch's own operations on one thread inside the block (this thread only; restored after).

    Sampling works over the vocabulary: > 32k values, where torch forks its OpenMP team, whose join waits for
    every thread. On a loaded machine the second thread is often not running and each such op costs a scheduler
    time slice: measured 8 ms per op with 2 threads against 10-50 us on one (one sampled token with the CLI's
    defaults: 56 ms against 0.5 ms). Switching costs ~0.1 us. The engine's thread runs on one thread throughout.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def draw_batch(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """Tokens for logits (B, vocab) already penalized/biased/masked: greedy rows by one argmax, the others by
    temperature, the top-k / top-p / min-p filters (rows with the same filters together) and one draw from each
    row's own generator (inverse CDF: the first token whose cumulative weight passes u x the row's total).

    Every operation works row by row, so a row's token does not depend on the other rows of the batch. The
    (rows, vocab) intermediates live in this thread's reused buffers: fresh megabytes every step cost page
    faults (measured: a float64 cumsum over 8 x 49k went from 0.4 ms to 3 ms when its output was new memory).
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
    vocab = logits.shape[-1]
    temperatures = torch.tensor([p.temperature for p in params], dtype=torch.float32)[:, None]  # (S, 1)
    weights = _buffer("weights", (len(sampled), vocab), torch.float32)
    if len(sampled) == len(samplers):
        torch.div(logits, temperatures, out=weights)
    else:
        torch.index_select(logits, 0, torch.tensor(sampled), out=weights).div_(temperatures)
    groups: dict[tuple[int, float, float], list[int]] = {}
    for row, p in enumerate(params):
        if p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0:  # skip the filters when all are off
            groups.setdefault((p.top_k, p.top_p, p.min_p), []).append(row)
    for (top_k, top_p, min_p), rows in groups.items():
        if len(rows) == len(params):
            weights.copy_(filter_logits(weights, top_k, top_p, min_p))
        else:
            weights[rows] = filter_logits(weights[rows], top_k, top_p, min_p)
    weights.sub_(weights.amax(-1, keepdim=True)).exp_()  # unnormalized probabilities; -inf -> exactly 0
    cdf = torch.cumsum(weights, -1, dtype=torch.float64, out=_buffer("cdf", (len(sampled), vocab), torch.float64))
    uniforms = torch.tensor([samplers[i].uniform() for i in sampled], dtype=torch.float64)  # (S,)
    # right=True: the first token whose cumulative weight exceeds the target; a zero-weight token never does.
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0].tolist()
    for row, (i, token) in enumerate(zip(sampled, picks)):
        if token >= vocab:  # u x total rounded up to the total: the last token with any weight
            token = int(weights[row].nonzero().max())
        tokens[i] = token
    return tokens


_local = threading.local()


def _buffer(name: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A scratch tensor of `shape`, this thread's own, reused from call to call (grown when too small)."""
    buffers = _local.__dict__.setdefault("buffers", {})
    size = shape[0] * shape[1]
    buffer = buffers.get(name)
    if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
        buffer = buffers[name] = torch.empty(size, dtype=dtype)
    return buffer[:size].view(shape)
