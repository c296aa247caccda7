"""Sampling: pure functions from (logits, params, rng state) to the next token.

The order of operations follows vLLM: penalties and logit bias on the raw logits, then
temperature, then the top-k / top-p / min-p filters on the tempered distribution, then a draw.
Temperature 0 is greedy decoding. An optional `allowed` mask (constrained decoding) removes
every other token after the logit bias, so no setting can sample outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import torch

from .errors import RequestError

# (logits (vocab,), tokens so far, optional allowed mask (vocab,) bool) -> next token
Sampler = Callable[[torch.Tensor, Sequence[int], Optional[torch.Tensor]], int]


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


def token_logprobs(logits: torch.Tensor, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of `token` under the model's own distribution softmax(logits (vocab,)), and the
    `top_n` most likely tokens with theirs (before penalties, temperature or masks, as OpenAI reports)."""
    logprobs = logits.float().log_softmax(-1)  # (vocab,)
    top_values, top_ids = logprobs.topk(top_n) if top_n > 0 else (logprobs[:0], logprobs[:0].long())
    return float(logprobs[token]), list(zip(top_ids.tolist(), top_values.tolist()))


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Set to -inf every token outside the top-k, then outside the top-p nucleus, then under min_p x the top prob.

    Each filter sees the distribution renormalized over what the previous ones kept.
    """
    sorted_logits, order = logits.sort(descending=True)  # (vocab,)
    if top_k > 0:
        sorted_logits[top_k:] = float("-inf")
    if top_p < 1.0:
        probs = sorted_logits.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
        mass_before = probs.cumsum(-1) - probs
        sorted_logits[1:][mass_before[1:] >= top_p] = float("-inf")
    if min_p > 0.0:
        probs = sorted_logits.softmax(-1)
        sorted_logits[probs < min_p * probs[0]] = float("-inf")
    return torch.empty_like(logits).scatter_(0, order, sorted_logits)


def make_sampler(params: SamplingParams) -> Sampler:
    """A sampler closed over its own generator: the same seed gives the same tokens."""
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def sample(logits: torch.Tensor, history: Sequence[int], allowed: torch.Tensor | None = None) -> int:
        logits = logits.float()
        logits = apply_penalties(logits, history, params)
        logits = apply_logit_bias(logits, params.logit_bias)
        if allowed is not None:
            logits = apply_token_mask(logits, allowed)
        if params.greedy:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0.0:  # skip the vocabulary sort when all are off
            logits = filter_logits(logits, params.top_k, params.top_p, params.min_p)
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))

    return sample
