"""Generation for one sequence: prefill the prompt, then decode token by token.

`generate` is a generator of GenerationStep: each carries the sampled token and the text that
became final with it. Text that might be the start of a stop string is held back until it is
clear, so a partial stop string is never emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from .cache.kv import KVCache
from .errors import RequestError
from .sampling import SamplingParams, draw_batch, logprobs_batch, make_sampler, prepare_logits
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .speculative import Speculator


class CausalLM(Protocol):
    def forward(self, tokens: np.ndarray, cache: KVCache, *, all_logits: bool = False) -> np.ndarray:
        """tokens int64 (N,) -> float32 logits (N, vocab) with `all_logits`, else (1, vocab) for the last token."""


class TokenConstraint(Protocol):
    """Constrained decoding for one sequence (e.g. a JSON schema): which tokens may come next."""

    def allowed(self) -> np.ndarray: ...  # (vocab,) bool: the tokens the constraint accepts next

    def accept(self, token_id: int) -> None: ...  # advance past the sampled token


@dataclass(frozen=True)
class TokenLogprob:
    logprob: float  # of the sampled token under the model's distribution
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob) of the most likely tokens, best first


@dataclass(frozen=True)
class GenerationStep:
    token_id: int
    text: str  # text made final by this step (may be empty)
    finish_reason: str | None = None  # "stop" (end token or stop string), "length", or None while running
    logprob: TokenLogprob | None = None  # only when the decoder was asked for logprobs


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


class SequenceDecoder:
    """Everything after the logits for one sequence: sampling, end tokens, stop strings, limits, text.

    The single-sequence loop below and a batched engine share it: they only differ in how logits
    are produced. `step` is `decode_batch` on a batch of one, so a sequence decoded alongside others
    gets exactly the tokens it gets alone.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], params: SamplingParams, *,
                 max_tokens: int, stop: Sequence[str] = (), constraint: TokenConstraint | None = None,
                 top_logprobs: int | None = None):
        """`top_logprobs`: None for no logprobs, else how many alternatives to report with each token."""
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.sampler = make_sampler(params)
        self.matcher = StopStringMatcher(stop)
        self.text_decoder = tokenizer.stream_decoder()
        self.history = list(prompt_ids)  # prompt and generated tokens, for the penalties
        self.produced = 0
        self.constraint = constraint
        self.top_logprobs = top_logprobs

    def step(self, logits: np.ndarray, room: int) -> GenerationStep:
        """Sample from logits (vocab,); `room` is how many more tokens the KV cache can take."""
        result = decode_batch([self], logits[None], [room])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def prepare(self, logits: np.ndarray) -> np.ndarray:
        """This sequence's penalties, logit bias and constraint mask on its logits (vocab,)."""
        allowed = self.constraint.allowed() if self.constraint else None
        return prepare_logits(logits, self.history, self.sampler.params, allowed)

    def advance(self, token: int, logprob: TokenLogprob | None, room: int) -> GenerationStep:
        """Take the sampled token: constraint state, end tokens, stop strings, limits and text."""
        self.produced += 1
        if self.constraint:
            self.constraint.accept(token)
        if token in self.tokenizer.stop_ids:
            return GenerationStep(token, self.matcher.flush() + self.text_decoder.flush(), "stop", logprob)
        self.history.append(token)
        text, stopped = self.matcher.feed(self.text_decoder.push(token))
        if stopped:
            return GenerationStep(token, text, "stop", logprob)
        if self.produced == self.max_tokens or room == 0:
            tail, stopped = self.matcher.feed(self.text_decoder.flush())
            return GenerationStep(token, text + tail + ("" if stopped else self.matcher.flush()),
                                  "stop" if stopped else "length", logprob)
        return GenerationStep(token, text, logprob=logprob)


def decode_batch(decoders: Sequence[SequenceDecoder], logits: np.ndarray,
                 rooms: Sequence[int]) -> list[GenerationStep | Exception]:
    """One step of several sequences: row i of logits (B, vocab) is decoders[i]'s, rooms[i] its KV room.

    Per-row work (penalties, bias, masks, text) runs per sequence; the sampling itself is one batched draw
    (sampling.draw_batch) and the logprobs one log-softmax, and every row's result is what that decoder's
    `step` gives alone. A sequence that fails gets its exception in the list; the others go on.
    """
    logits = np.asarray(logits, dtype=np.float32)
    results: list[GenerationStep | Exception | None] = [None] * len(decoders)
    live: list[int] = []  # rows that sample
    rows: list[np.ndarray] = []
    changed = False
    for i, decoder in enumerate(decoders):
        row = logits[i]
        try:
            prepared = decoder.prepare(row)
        except Exception as error:
            results[i] = error
            continue
        changed = changed or prepared is not row
        live.append(i)
        rows.append(prepared)
    if not live:
        return results  # type: ignore[return-value]
    batch = logits if len(live) == len(decoders) and not changed else np.stack(rows)
    try:
        tokens = draw_batch(batch, [decoders[i].sampler for i in live])
    except Exception as error:
        for i in live:
            results[i] = error
        return results  # type: ignore[return-value]
    logprobs: dict[int, TokenLogprob] = {}
    wanted = [j for j, i in enumerate(live) if decoders[i].top_logprobs is not None]
    if wanted:
        indices = [live[j] for j in wanted]
        raw = logits if len(indices) == len(decoders) else logits[indices]
        values = logprobs_batch(raw, [tokens[j] for j in wanted], [decoders[i].top_logprobs for i in indices])
        for j, (value, top) in zip(wanted, values):
            logprobs[j] = TokenLogprob(value, tuple(top))
    for j, (i, token) in enumerate(zip(live, tokens)):
        try:
            results[i] = decoders[i].advance(token, logprobs.get(j), rooms[i])
        except Exception as error:
            results[i] = error
    return results  # type: ignore[return-value]


def check_prompt(prompt_ids: Sequence[int], cache: KVCache) -> list[int]:
    """The prompt tokens the cache does not hold yet; RequestError when they cannot run."""
    if not prompt_ids:
        raise RequestError("the prompt is empty: give at least one token of input")
    new_tokens = list(prompt_ids[cache.offset:])
    if len(new_tokens) > cache.room():
        raise RequestError(f"the prompt has {len(prompt_ids)} tokens but the context holds {cache.max_tokens}; "
                           "shorten the prompt or raise the context size (--ctx)")
    return new_tokens


def generate(model: CausalLM, tokenizer: Tokenizer, prompt_ids: Sequence[int], cache: KVCache,
             params: SamplingParams, *, max_tokens: int, stop: Sequence[str] = (),
             speculator: Speculator | None = None) -> Iterator[GenerationStep]:
    """Continue `prompt_ids`, whose first `cache.offset` tokens the cache already holds; with a `speculator`
    (speculative.py), each step verifies its drafts in one forward pass."""
    decoder = SequenceDecoder(tokenizer, prompt_ids, params, max_tokens=max_tokens, stop=stop)
    new_tokens = check_prompt(prompt_ids, cache)
    logits = model.forward(np.asarray(new_tokens, dtype=np.int64), cache)[-1]  # (vocab,)
    step = decoder.step(logits, cache.room())
    state = speculator.start(prompt_ids) if speculator else None  # a draft model runs the prompt too
    yield step
    while step.finish_reason is None:
        if speculator is None:
            logits = model.forward(np.asarray([step.token_id], dtype=np.int64), cache)[-1]
            steps: list[GenerationStep | Exception] = [decoder.step(logits, cache.room())]
        else:
            steps = speculator.advance(model, decoder, cache, state)
        for step in steps:
            if isinstance(step, Exception):
                raise step
            yield step
