"""What the engine is asked to do (a GenerationRequest or an EmbeddingRequest) and what it tracks per running
sequence."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, Union

import numpy as np

from ..cache.kv import KVCache
from ..errors import DeeprootsError
from ..generate import GenerationStep, SequenceDecoder, TokenConstraint
from ..sampling import SamplingParams
from ..speculative import Proposal, SequenceSpeculation


class QueueFullError(DeeprootsError):
    """The engine's waiting queue is full: retry later (HTTP 429)."""


class EngineStoppedError(DeeprootsError):
    """The engine is shutting down or its loop died: no new work is accepted (HTTP 503)."""


# The engine reports every step (or an embedding's result), or the error that ended the sequence, through the
# request's callback.
SequenceEvent = Union[GenerationStep, "EmbeddingResult", Exception]


class EventDispatcher(Protocol):
    """Carries a step's events to their callbacks, e.g. onto an asyncio loop: the engine hands each dispatcher all
    the (on_event, event) pairs of one step in ONE call, so a server wakes its loop once per step, not per token."""

    def dispatch(self, deliveries: list[tuple[Callable[[SequenceEvent], None], SequenceEvent]]) -> None: ...

_ids = itertools.count()


@dataclass
class EngineRequest:
    """What every request the engine runs has besides its own fields: where its events go, and a way to call it
    off. `on_event` is called from the engine thread (it must not block), or, with a `dispatcher`, wherever the
    dispatcher calls it (the engine passes it each step's events in one batch)."""
    dispatcher: EventDispatcher | None = field(default=None, kw_only=True)
    id: int = field(default_factory=lambda: next(_ids), kw_only=True)
    cancelled: threading.Event = field(default_factory=threading.Event, kw_only=True)

    def cancel(self) -> None:
        """Safe from any thread: the engine drops the sequence (queued or running) at its next step."""
        self.cancelled.set()


@dataclass
class GenerationRequest(EngineRequest):
    """One sequence to generate: its prompt, then up to `max_tokens` sampled tokens, one event each."""
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    on_event: Callable[[SequenceEvent], None]
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None
    constraint: Callable[[], TokenConstraint] | None = None  # makes this sequence's own constraint state
    cache_namespace: bytes = b""  # prefix-cache entries are shared only within one namespace
    cached_tokens: int = 0  # prompt tokens the engine took from the prefix cache (set when the sequence starts)
    # speculative decoding: draft tokens kept and rejected so far (updated before the step's events go out)
    accepted_draft_tokens: int = 0
    rejected_draft_tokens: int = 0


@dataclass
class EmbeddingRequest(EngineRequest):
    """One input to embed: its prompt runs in chunks beside the decoding sequences, like a prefill, under the same
    queue bound and KV budget; one EmbeddingResult event (or the error that ended it) comes back."""
    prompt_ids: list[int]
    on_event: Callable[[SequenceEvent], None]
    max_tokens: ClassVar[int] = 0  # nothing is generated: the KV reservation is the prompt alone


@dataclass(frozen=True)
class EmbeddingResult:
    vector: np.ndarray  # (d_model,) float32: the final hidden states (after the output norm), mean-pooled, L2-normed


class Sequence:
    """A request the scheduler admitted: its KV cache, its decoder, and the tokens still to feed."""

    def __init__(self, request: GenerationRequest | EmbeddingRequest, cache: KVCache,
                 decoder: SequenceDecoder | None, speculation: SequenceSpeculation | None = None):
        self.request = request
        self.speculation = speculation  # None: plain decoding (no speculator, or an embedding)
        self.proposal: Proposal | None = None  # this step's drafts, when it has any
        self.cache = cache
        self.decoder = decoder  # None for an embedding
        self.pending = list(request.prompt_ids[cache.offset:])  # tokens to run: the uncached prompt, then the last sample
        self.prefilling = True  # until the prompt's last token has run and produced logits
        self.hidden: list[np.ndarray] = []  # an embedding's final hidden states so far, one (T, d_model) per chunk

    @property
    def embedding(self) -> bool:
        return self.decoder is None

    @property
    def reserved_tokens(self) -> int:
        return self.cache.max_tokens
