"""A request's engine events gathered for a test (the engine tests and the tensor-parallel ones)."""

import threading


class Collector:
    """Gathers one request's events; wait() returns its text and finish reason."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Exception) or event.finish_reason is not None:
            self.done.set()

    def wait(self, timeout: float = 120.0) -> tuple[str, str]:
        assert self.done.wait(timeout), "the engine did not finish the request in time"
        if isinstance(self.events[-1], Exception):
            raise self.events[-1]
        return "".join(step.text for step in self.events), self.events[-1].finish_reason

    def logprobs(self) -> list[tuple[int, float]]:
        """(token id, its logprob) of every step: equal floats mean equal logits, bit for bit in practice."""
        self.wait()
        return [(step.token_id, step.logprob.logprob) for step in self.events]
