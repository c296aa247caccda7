"""The one request path of every chat-like API (OpenAI chat completions, Anthropic Messages, OpenAI Responses,
Ollama): validation and prompt (chat_plan.py) -> sampling and constraint -> engine -> the choices' text parsed
into API-neutral events (chat_parse.py) -> one writer per API.

    run = await start_chat(request, state, served, body)   # body: a ChatCompletionRequest; 429 raised here
    result = await run.complete()                           # a whole answer: ([ChatAnswer per choice], ChatUsage)
    return run.stream(write, error_chunk)                   # or a stream: write(run.items()) -> the API's chunks

`run.items()` yields, per engine step of a choice, a ChatStep (the events that step made final, the raw step for
logprobs, and on the choice's last step its ChatAnswer), then one ChatUsage. Admission, cancellation when the client
leaves, metrics and the request log are the Exchange's (exchange.py), done once for all APIs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..generate import GenerationStep
from .chat_output import ChatAnswer, ChatEvent
from .chat_plan import ChatPlan, plan_chat
from .errors import APIError
from .exchange import Exchange
from .generation import GenerationJob, resolve_max_tokens, sampling_params, stop_strings
from .middleware import cache_namespace
from .schemas import ChatCompletionRequest


@dataclass(frozen=True)
class ChatUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens of choice 0 taken from the prefix cache (the request's own namespace)


@dataclass(frozen=True)
class ChatStep:
    index: int  # the choice
    events: tuple[ChatEvent, ...]  # what this step made final (often nothing: text held back, or a call growing)
    step: GenerationStep  # the engine's step: token, logprobs, finish_reason
    answer: ChatAnswer | None = None  # the choice's whole answer, on its last step


ChatItem = ChatStep | ChatUsage


class ChatRun:
    """A submitted chat request: its choices' parsers over the exchange's steps."""

    def __init__(self, exchange: Exchange, plan: ChatPlan):
        self.exchange, self.plan = exchange, plan
        self.parsers = [plan.parser() for _ in exchange.choices]

    @property
    def id(self) -> str:
        return self.exchange.id

    @property
    def n(self) -> int:
        return len(self.parsers)

    async def items(self) -> AsyncIterator[ChatItem]:
        async for index, step in self.exchange.steps():
            parser = self.parsers[index]
            events = parser.feed(step.text)
            answer = None
            if step.finish_reason is not None:
                rest, answer = parser.finish(step.finish_reason)
                events += rest
            yield ChatStep(index, tuple(events), step, answer)
        exchange = self.exchange
        yield ChatUsage(exchange.prompt_tokens, exchange.completion_tokens, exchange.cached_tokens)

    async def complete(self) -> tuple[list[ChatAnswer], ChatUsage] | None:
        """Every choice's answer and the usage; None when the client left first (the request is counted as 499)."""
        answers: dict[int, ChatAnswer] = {}
        usage: list[ChatUsage] = []

        async def record() -> AsyncIterator[None]:
            async for item in self.items():
                if isinstance(item, ChatUsage):
                    usage.append(item)
                elif item.answer is not None:
                    answers[item.index] = item.answer
                yield

        if not await self.exchange.collect(record()):
            return None
        return [answers[index] for index in range(self.n)], usage[0]

    def stream(self, write: Callable[[AsyncIterator[ChatItem]], AsyncIterator[str]],
               error_chunk: Callable[[APIError], str], media_type: str = "text/event-stream") -> StreamingResponse:
        """The streamed response: write(items) gives the API's chunks; an error once the headers are sent becomes
        error_chunk(error). However it ends, the choices are cancelled and the request is counted once."""
        return self.exchange.stream_response(write(self.items()), error_chunk, media_type)


async def start_chat(request: Request, state, served, body: ChatCompletionRequest, request_id: str) -> ChatRun:
    """Validate `body` against the served model, render its prompt and submit its choices (a full queue is a 429
    raised here, before any response starts)."""
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    plan = await asyncio.to_thread(plan_chat, served, body)
    model = served.model
    job = GenerationJob(
        plan.prompt_ids, sampling_params(body, model.config.vocab_size),
        resolve_max_tokens(body.max_completion_tokens or body.max_tokens, len(plan.prompt_ids), model.context),
        stop_strings(body), (body.top_logprobs or 0) if body.logprobs else None, plan.constraint,
        cache_namespace(request.scope, body.cache_salt))
    exchange = Exchange.start(request, state, served.engine, job, request_id, body.messages[-1].text())
    return ChatRun(exchange, plan)
