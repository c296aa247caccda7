"""What the engine is asked to do (a GenerationRequest) and what it tracks per running sequence."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Union

from ..cache.kv import KVCache
from ..errors import DeeprootsError
from ..generate import GenerationStep, SequenceDecoder, TokenConstraint
from ..sampling import SamplingParams


class QueueFullError(DeeprootsError):
    """The engine's waiting queue is full: retry later (HTTP 429)."""


class EngineStoppedError(DeeprootsError):
    """The engine is shutting down or its loop died: no new work is accepted (HTTP 503)."""


# The engine reports every step, or the error that ended the sequence, through the request's callback.
SequenceEvent = Union[GenerationStep, Exception]


class EventDispatcher(Protocol):
    """Carries a step's events to their callbacks, e.g. onto an asyncio loop: the engine hands each dispatcher all
    the (on_event, event) pairs of one step in ONE call, so a server wakes its loop once per step, not per token."""

    def dispatch(self, deliveries: list[tuple[Callable[[SequenceEvent], None], SequenceEvent]]) -> None: ...

_ids = itertools.count()


@dataclass
class GenerationRequest:
    """One sequence to generate. `on_event` is called from the engine thread (it must not block), or, with a
    `dispatcher`, wherever the dispatcher calls it (the engine passes it each step's events in one batch)."""
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    on_event: Callable[[SequenceEvent], None]
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    constraint: Callable[[], TokenConstraint] | None = None  # makes this sequence's own constraint state
    dispatcher: EventDispatcher | None = None
    cache_namespace: bytes = b""  # prefix-cache entries are shared only within one namespace
    cached_tokens: int = 0  # prompt tokens the engine took from the prefix cache (set when the sequence starts)
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Safe from any thread: the engine drops the sequence (queued or running) at its next step."""
        self.cancelled.set()


class Sequence:
    """A request the scheduler admitted: its KV cache, its decoder, and the tokens still to feed."""

    def __init__(self, request: GenerationRequest, cache: KVCache, decoder: SequenceDecoder):
        self.request = request
        self.cache = cache
        self.decoder = decoder
        self.pending = list(request.prompt_ids[cache.offset:])  # tokens to run: the uncached prompt, then the last sample
        self.prefilling = True  # until the prompt's last token has run and produced logits

    @property
    def reserved_tokens(self) -> int:
        return self.cache.max_tokens
