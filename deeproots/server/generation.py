"""From a validated request body to engine work and back: prompt ids, per-choice sampling, the event stream."""

from __future__ import annotations

import asyncio
import re
import weakref
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import numpy as np

from ..engine import EmbeddingRequest, Engine, EngineStoppedError, GenerationRequest
from ..engine.grammar import ConstraintError
from ..errors import InternalError
from ..generate import GenerationStep, TokenConstraint
from ..sampling import SamplingParams
from .errors import APIError
from .schemas import SamplingFields

ASCII_DIGITS = re.compile(r"[0-9]{1,10}")  # a token id as text; any longer key is out of every vocabulary


@dataclass
class GenerationJob:
    """Everything the engine needs for the n choices of one API request."""
    prompt_ids: list[int]
    params: list[SamplingParams]  # one per choice (seeds differ)
    max_tokens: int
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    constraint: Callable[[], TokenConstraint] | None = None
    cache_namespace: bytes = b""  # middleware.cache_namespace: the API key's, split by the request's cache_salt


@dataclass
class Choice:
    """What one choice produced so far."""
    index: int
    steps: list[GenerationStep] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(step.text for step in self.steps)


def sampling_params(body: SamplingFields, vocab_size: int) -> list[SamplingParams]:
    """One SamplingParams per choice: choice i draws from seed + i, so each is reproducible on its own."""
    bias = {bias_token(key, vocab_size): value for key, value in (body.logit_bias or {}).items()}
    return [SamplingParams(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, min_p=body.min_p,
                           repeat_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
                           frequency_penalty=body.frequency_penalty, logit_bias=bias,
                           seed=None if body.seed is None else body.seed + index)
            for index in range(body.n)]


def bias_token(key: str, vocab_size: int) -> int:
    """A logit_bias key as a token id: ASCII digits naming a token of the vocabulary (str.isdigit also takes "²")."""
    if not ASCII_DIGITS.fullmatch(key) or int(key) >= vocab_size:
        shown = key if len(key) <= 32 else key[:32] + "..."
        raise APIError(400, f"logit_bias keys must be token ids below {vocab_size}, got {shown!r}", param="logit_bias")
    return int(key)


def stop_strings(body: SamplingFields) -> tuple[str, ...]:
    if body.stop is None:
        return ()
    return (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)


def resolve_max_tokens(requested: int | None, prompt_length: int, context: int) -> int:
    """What the client asked for, capped to the room left in the context (the answer then ends with 'length')."""
    room = context - prompt_length
    if room < 1:
        raise APIError(400, f"the prompt has {prompt_length} tokens but the context holds {context}; "
                            "shorten the prompt", param="messages", code="context_length_exceeded")
    return min(requested or room, room)


class LoopDispatcher:
    """Delivers engine events on an asyncio loop: ONE call_soon_threadsafe per engine step for all the loop's
    requests (each call writes to the loop's wake-up pipe), and their callbacks then run on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def dispatch(self, deliveries: list) -> None:
        self.loop.call_soon_threadsafe(_deliver, deliveries)


def _deliver(deliveries: list) -> None:
    for on_event, event in deliveries:
        on_event(event)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopDispatcher] = weakref.WeakKeyDictionary()


def loop_dispatcher(loop: asyncio.AbstractEventLoop) -> LoopDispatcher:
    """The one dispatcher of `loop`, shared by all its requests so that a step's events travel together."""
    dispatcher = _dispatchers.get(loop)
    if dispatcher is None:
        dispatcher = _dispatchers[loop] = LoopDispatcher(loop)
    return dispatcher


class ChoiceRun:
    """The engine sequences of one request's n choices, submitted together when it is built, so that a full queue
    is known before any response starts; events() then yields (choice index, step) as the engine produces them.

    Leaving the iteration early (client gone, error) or cancel() cancels every choice: the engine frees their KV
    at its next step, whether they were queued or running.
    """

    def __init__(self, engine: Engine, job: GenerationJob):
        if len(job.params) > engine.config.max_queue:  # every choice waits in the queue before it runs
            raise APIError(400, f"n={len(job.params)} exceeds what this server queues at once "
                                f"({engine.config.max_queue}); ask for fewer choices", param="n")
        dispatcher = loop_dispatcher(asyncio.get_running_loop())
        self._events: asyncio.Queue = asyncio.Queue()  # (choice index, event), put by the callbacks on the loop
        self.requests = [
            GenerationRequest(job.prompt_ids, params, job.max_tokens, stop=job.stop, top_logprobs=job.top_logprobs,
                              constraint=job.constraint, dispatcher=dispatcher, cache_namespace=job.cache_namespace,
                              on_event=lambda event, index=index: self._events.put_nowait((index, event)))
            for index, params in enumerate(job.params)]
        try:
            for request in self.requests:
                engine.submit(request)
        except Exception:
            self.cancel()  # the choices already queued
            raise

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens of choice 0 taken from the prefix cache (set by the engine before the choice's first event)."""
        return self.requests[0].cached_tokens

    @property
    def draft_tokens(self) -> tuple[int, int]:
        """Speculative decoding's (accepted, rejected) draft tokens over every choice."""
        return (sum(request.accepted_draft_tokens for request in self.requests),
                sum(request.rejected_draft_tokens for request in self.requests))

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def events(self) -> AsyncIterator[tuple[int, GenerationStep]]:
        remaining = len(self.requests)
        try:
            while remaining:
                index, event = await self._events.get()
                if isinstance(event, Exception):
                    raise engine_failure(event)
                if event.finish_reason is not None:
                    remaining -= 1
                yield index, event
        finally:
            self.cancel()


def engine_failure(error: Exception) -> Exception:
    """What an error the engine reports for a sequence means to the client. The request was validated before it
    was submitted, so a RequestError from inside the engine (a kernel's, the KV cache's) is our bug, a 500; only
    a shutdown (503) and a grammar that cannot go on (the client's schema, 400) are not."""
    if isinstance(error, (EngineStoppedError, ConstraintError)):
        return error
    failure = InternalError(f"the engine failed a sequence: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


async def run_embeddings(engine: Engine, inputs: list[list[int]]) -> AsyncIterator[tuple[int, np.ndarray]]:
    """Submit every input as an embedding request and yield (input index, vector (d_model,)) as each finishes.

    Inputs run in chunks beside the decoding sequences, under the queue bound; leaving early cancels them all.
    """
    dispatcher = loop_dispatcher(asyncio.get_running_loop())
    events: asyncio.Queue = asyncio.Queue()
    requests = [EmbeddingRequest(ids, dispatcher=dispatcher,
                                 on_event=lambda event, index=index: events.put_nowait((index, event)))
                for index, ids in enumerate(inputs)]
    try:
        for request in requests:
            engine.submit(request)
        for _ in requests:
            index, event = await events.get()
            if isinstance(event, Exception):
                raise engine_failure(event)
            yield index, event.vector
    finally:
        for request in requests:
            request.cancel()
