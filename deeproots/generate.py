"""Generation for one sequence: prefill the prompt, then decode token by token.

`generate` is a generator of GenerationStep: each carries the sampled token and the text that
became final with it. Text that might be the start of a stop string is held back until it is
clear, so a partial stop string is never emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from .cache.kv import KVCache
from .errors import RequestError
from .sampling import SamplingParams, make_sampler
from .tokenizer import Tokenizer


class CausalLM(Protocol):
    def forward(self, tokens: torch.Tensor, cache: KVCache, *, all_logits: bool = False) -> torch.Tensor: ...


@dataclass(frozen=True)
class GenerationStep:
    token_id: int
    text: str  # text made final by this step (may be empty)
    finish_reason: str | None = None  # "stop" (end token or stop string), "length", or None while running


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back any tail that could begin one."""

    def __init__(self, stops: Sequence[str]):
        if any(not isinstance(stop, str) or not stop for stop in stops):
            raise RequestError("stop strings must be non-empty strings")
        self.stops = list(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text now safe to emit, whether a stop string was found)."""
        self.pending += text
        hits = [index for index in (self.pending.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            safe, self.pending = self.pending[:min(hits)], ""
            return safe, True
        hold = max((self._overlap(stop) for stop in self.stops), default=0)
        safe, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return safe, False

    def _overlap(self, stop: str) -> int:
        """Length of the longest tail of `pending` that is a proper prefix of `stop`."""
        for length in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:length]):
                return length
        return 0

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return text


def generate(model: CausalLM, tokenizer: Tokenizer, prompt_ids: Sequence[int], cache: KVCache,
             params: SamplingParams, *, max_tokens: int, stop: Sequence[str] = ()) -> Iterator[GenerationStep]:
    """Continue `prompt_ids`, whose first `cache.offset` tokens the cache already holds."""
    if not prompt_ids:
        raise RequestError("the prompt is empty: give at least one token of input")
    if max_tokens < 1:
        raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
    new_tokens = list(prompt_ids[cache.offset:])
    if len(new_tokens) > cache.room():
        raise RequestError(f"the prompt has {len(prompt_ids)} tokens but the context holds {cache.max_tokens}; "
                           "shorten the prompt or raise the context size (--ctx)")
    sample = make_sampler(params)
    matcher = StopStringMatcher(stop)
    decoder = tokenizer.stream_decoder()
    history = list(prompt_ids)
    logits = model.forward(torch.tensor(new_tokens, dtype=torch.long), cache)[-1]  # (vocab,)
    for produced in range(1, max_tokens + 1):
        token = sample(logits, history)
        if token in tokenizer.stop_ids:
            yield GenerationStep(token, matcher.flush() + decoder.flush(), "stop")
            return
        history.append(token)
        text, stopped = matcher.feed(decoder.push(token))
        if stopped:
            yield GenerationStep(token, text, "stop")
            return
        if produced == max_tokens or cache.room() == 0:
            tail, stopped = matcher.feed(decoder.flush())
            yield GenerationStep(token, text + tail + ("" if stopped else matcher.flush()),
                                 "stop" if stopped else "length")
            return
        yield GenerationStep(token, text)
        logits = model.forward(torch.tensor([token], dtype=torch.long), cache)[-1]
