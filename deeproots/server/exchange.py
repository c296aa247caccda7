"""One generation request in flight, whatever API it came through: admission (a full queue is a 429 before any
response starts), the client leaving (its sequences are cancelled), and its metrics and log line, counted once.

Every API's route goes through here: `Exchange.start` submits the job, then `collect` answers a whole response and
`stream_response` streams one, in the API's own shapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable, NoReturn

from fastapi import Request
from fastapi.responses import StreamingResponse

from .errors import APIError, as_api_error
from .generation import Choice, ChoiceRun, GenerationJob

log = logging.getLogger("deeproots.server")


class Exchange:
    """A submitted request: its choices as they grow, and its metrics and log line when it ends."""

    def __init__(self, request: Request, state, job: GenerationJob, request_id: str, prompt_text: str):
        self.started = time.perf_counter()
        self.endpoint = request.url.path
        self.request = request
        self.state, self.job, self.id, self.prompt_text = state, job, request_id, prompt_text
        self.choices = [Choice(index) for index in range(len(job.params))]
        self.first_token: float | None = None
        self.stream_status = 499  # a stream's outcome, unless it completes or ends with an error event
        self.run: ChoiceRun | None = None

    @classmethod
    def start(cls, request: Request, state, engine, job: GenerationJob, request_id: str,
              prompt_text: str) -> Exchange:
        """Submit the job's choices; a refusal (full queue, too many choices) is counted and raised as an APIError."""
        exchange = cls(request, state, job, request_id, prompt_text)
        try:
            exchange.run = ChoiceRun(engine, job)
        except Exception as error:
            exchange.fail(error)
        return exchange

    def fail(self, error: Exception) -> NoReturn:
        """Count the request as failed and raise its APIError."""
        failure = as_api_error(error)
        self.finished(failure.status)
        raise failure from error

    async def steps(self) -> AsyncIterator[tuple[int, object]]:
        """The run's (choice index, step), recorded in the choices as they pass."""
        async for index, step in self.run.events():
            if self.first_token is None:
                self.first_token = time.perf_counter()
                self.state.metrics.time_to_first_token.observe(self.first_token - self.started)
            self.choices[index].steps.append(step)
            self.choices[index].finish_reason = step.finish_reason
            yield index, step

    @property
    def prompt_tokens(self) -> int:
        return len(self.job.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.steps) for choice in self.choices)

    @property
    def cached_tokens(self) -> int:
        return self.run.cached_tokens

    async def collect(self, items: AsyncIterator) -> bool:
        """Consume `items` (built on steps()) to the end for a whole response; False when the client left first
        (its sequences are cancelled and the request counted as 499). Errors are counted and raised as APIErrors."""
        try:
            await until_done_or_disconnected(self.request, items)
        except Exception as error:
            self.fail(error)
        if not all(choice.finish_reason for choice in self.choices):
            self.finished(499)
            return False
        self.finished(200)
        return True

    def stream_response(self, chunks: AsyncIterator[str], error_chunk: Callable[[APIError], str],
                        media_type: str = "text/event-stream") -> StreamingResponse:
        """The streamed answer: `chunks` in the API's shapes (built on steps()); an error after the headers are sent
        travels as the API's own error chunk."""
        return AdmittedStream(self, self._guarded(chunks, error_chunk), media_type)

    async def _guarded(self, chunks: AsyncIterator[str], error_chunk: Callable[[APIError], str]) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as error:  # headers are sent: the error travels as a chunk
            failure = as_api_error(error)
            self.stream_status = failure.status
            yield error_chunk(failure)
            return
        self.stream_status = 200

    def finished(self, status: int) -> None:
        latency = time.perf_counter() - self.started
        metrics = self.state.metrics
        metrics.requests.labels(self.endpoint, str(status)).inc()
        metrics.latency.labels(self.endpoint).observe(latency)
        log.info("request id=%s endpoint=%s status=%d n=%d prompt_tokens=%d completion_tokens=%d "
                 "ttft=%.3fs latency=%.3fs%s", self.id, self.endpoint, status, len(self.choices),
                 len(self.job.prompt_ids), self.completion_tokens,
                 (self.first_token - self.started) if self.first_token is not None else -1, latency,
                 f" prompt={self.prompt_text!r}" if self.state.log_prompts else "")


class AdmittedStream(StreamingResponse):
    """The streamed answer of a submitted run: however the response ends (even before its first chunk, when the
    client is already gone), the run's sequences are cancelled and the request is counted once."""

    def __init__(self, exchange: Exchange, chunks: AsyncIterator[str], media_type: str):
        super().__init__(chunks, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self.exchange = exchange

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.exchange.run.cancel()
            self.exchange.finished(self.exchange.stream_status)


async def until_done_or_disconnected(request: Request, events: AsyncIterator) -> None:
    """Consume `events` unless the client disconnects first; then stop consuming (which cancels the work)."""
    async def consume() -> None:
        async for _ in events:
            pass

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watch):
            task.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)
    if work.done() and not work.cancelled() and work.exception() is not None:
        raise work.exception()
