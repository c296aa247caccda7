"""Continuous batching: which sequences run this step, under a cap on sequences and on KV memory.

Every step the engine asks the scheduler to admit waiting requests (first come, first served) while
a sequence slot is free and the KV budget holds the request's reservation: its prompt plus max_tokens,
capped at the context. Requests that do not fit wait in a bounded queue; past it, submit refuses.
"""

from __future__ import annotations

from collections import deque

from ..errors import RequestError
from .request import GenerationRequest, QueueFullError, Sequence


class Scheduler:
    def __init__(self, *, max_running: int, max_queue: int, kv_budget_tokens: int, context: int):
        if max_running < 1 or max_queue < 0:
            raise RequestError(f"need at least one running slot and a non-negative queue, got {max_running}, {max_queue}")
        if kv_budget_tokens < context:
            raise RequestError(f"the KV budget ({kv_budget_tokens} tokens) must hold one full context ({context})")
        self.max_running = max_running
        self.max_queue = max_queue
        self.kv_budget_tokens = kv_budget_tokens
        self.context = context
        self.waiting: deque[GenerationRequest] = deque()
        self.running: list[Sequence] = []
        self.reserved_tokens = 0  # KV tokens held by running (and just admitted) sequences

    def reservation(self, request: GenerationRequest) -> int:
        return min(len(request.prompt_ids) + request.max_tokens, self.context)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request (called on the engine thread, which owns this object)."""
        if len(self.waiting) >= self.max_queue:
            raise QueueFullError(f"the queue is full ({self.max_queue} requests waiting); retry later")
        self.waiting.append(request)

    def admit(self) -> list[GenerationRequest]:
        """Take waiting requests, oldest first, while a slot and their KV reservation are free."""
        admitted: list[GenerationRequest] = []
        while self.waiting and len(self.running) + len(admitted) < self.max_running:
            need = self.reservation(self.waiting[0])
            if self.reserved_tokens + need > self.kv_budget_tokens:
                break  # first come, first served: a large request is not overtaken forever by small ones
            self.reserved_tokens += need
            admitted.append(self.waiting.popleft())
        return admitted

    def start(self, sequence: Sequence) -> None:
        self.running.append(sequence)

    def release(self, tokens: int) -> None:
        self.reserved_tokens -= tokens

    def retire(self, sequence: Sequence) -> None:
        self.running.remove(sequence)
        self.release(sequence.reserved_tokens)

    def drop_cancelled(self) -> list[Sequence]:
        """Forget cancelled requests still queued; return cancelled running sequences (the caller retires them)."""
        self.waiting = deque(request for request in self.waiting if not request.cancelled.is_set())
        return [sequence for sequence in self.running if sequence.request.cancelled.is_set()]

    @property
    def kv_usage(self) -> float:
        return self.reserved_tokens / self.kv_budget_tokens
