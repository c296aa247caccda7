"""How the APIs with one answer per request (Anthropic Messages, OpenAI Responses, Ollama) run the shared chat path
and write it: the route converts its body into a ChatCompletionRequest, then `answer` starts the run and hands its
events to the API's shapes, whole or streamed.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .chat import ChatItem, ChatStep, ChatUsage, start_chat
from .chat_output import ChatAnswer, ChatEvent
from .errors import APIError
from .exchange import Exchange
from .schemas import ChatCompletionRequest


class AnswerShapes(Protocol):
    """One API's shapes of an answer: whole (final), or a stream's chunks (opening, one per event, closing)."""
    id: str
    media_type: str

    def started(self, exchange: Exchange) -> None: ...  # the run is admitted: its prompt length, its clock
    def final(self, answer: ChatAnswer, usage: ChatUsage) -> dict: ...
    def opening(self) -> str: ...
    def chunks(self, event: ChatEvent) -> str: ...
    def closing(self, answer: ChatAnswer, usage: ChatUsage) -> str: ...
    def error(self, failure: APIError) -> str: ...  # an error once the stream has begun


async def answer(request: Request, state, served, chat: ChatCompletionRequest, shapes: AnswerShapes) -> Response:
    """Run `chat` (one choice) and answer in `shapes`: a whole response, or a stream when chat.stream."""
    run = await start_chat(request, state, served, chat, shapes.id)
    shapes.started(run.exchange)
    if chat.stream:
        return run.stream(lambda items: stream_chunks(items, shapes), shapes.error, shapes.media_type)
    result = await run.complete()
    if result is None:
        return Response(status_code=499)  # the client left; its sequence was cancelled
    answers, usage = result
    return JSONResponse(shapes.final(answers[0], usage))


async def stream_chunks(items: AsyncIterator[ChatItem], shapes: AnswerShapes) -> AsyncIterator[str]:
    if opening := shapes.opening():
        yield opening
    answer_so_far: ChatAnswer | None = None
    async for item in items:
        if isinstance(item, ChatStep):
            for event in item.events:
                if chunk := shapes.chunks(event):
                    yield chunk
            answer_so_far = item.answer or answer_so_far
        else:  # the usage, after the last step (whose answer is then known)
            yield shapes.closing(answer_so_far, item)
