"""The OpenAI-compatible HTTP API: routes only; the engine does the work, responses.py the shapes.

Nothing here is model-specific: prompts go through the model's own tokenizer and chat template. Every route is a
module-level function of `router`; it finds the ServerState on `request.app.state` (the `State` dependency), so a
route or helper can be imported and called alone. Tokenizing and template rendering run off the event loop: a
huge prompt must not freeze the other requests (nor /health).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Annotated, AsyncIterator

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine import Engine
from ..engine.grammar import GrammarCompiler
from ..errors import RequestError
from ..model import Model
from .errors import APIError, ClassifiedRoute, as_api_error, error_response, install_error_handlers
from .generation import (Choice, ChoiceRun, GenerationJob, resolve_max_tokens, run_embeddings, sampling_params,
                         stop_strings)
from .metrics import ServerMetrics
from .middleware import cache_namespace
from .responses import ChatShapes, CompletionShapes, sse
from .schemas import (MAX_INPUTS, ChatCompletionRequest, ChatMessage, CompletionRequest, DetokenizeRequest,
                      EmbeddingRequest, TokenizeRequest)

log = logging.getLogger("deeproots.server")


@dataclass
class ServedModel:
    """One model the server can answer with: its weights, its engine, and the grammars compiled for its vocabulary."""
    name: str
    model: Model
    engine: Engine

    def __post_init__(self) -> None:
        self.grammars = GrammarCompiler(self.model.tokenizer, self.model.config.vocab_size)

    def chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        # Only the template's markup becomes control tokens; what the client wrote stays text.
        return self.model.apply_chat_template([{"role": m.role, "content": m.text()} for m in messages],
                                              tokenize=True)


@dataclass
class ServerState:
    """What the routes share: the served models, found by name through served(), and the server's metrics."""
    default: ServedModel
    log_prompts: bool = False

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.default.engine)

    async def served(self, name: str | None) -> ServedModel:
        """The model a request names (None: the default), or a 404 naming what is served."""
        if name is not None and name != self.default.name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.default.name!r}",
                           param="model", code="model_not_found")
        return self.default


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="deeproots", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.deeproots = state
    install_error_handlers(app)
    app.include_router(router)
    return app


def server_state(request: Request) -> ServerState:
    return request.app.state.deeproots


State = Annotated[ServerState, Depends(server_state)]
router = APIRouter(route_class=ClassifiedRoute)


# --- service routes ---------------------------------------------------------------------------------------

@router.get("/health")
async def health(state: State) -> Response:
    if not state.default.engine.alive:
        return error_response(503, "the engine loop is not running", type="server_error", code="engine_dead")
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def list_models(state: State) -> dict:
    served = state.default
    return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                         "owned_by": "deeproots", "max_model_len": served.model.context}]}


# --- generation -------------------------------------------------------------------------------------------

@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    served = await state.served(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    constraint = constraint_for(served, body)
    prompt_ids = await asyncio.to_thread(served.chat_prompt, body.messages)
    model = served.model
    job = GenerationJob(
        prompt_ids, sampling_params(body, model.config.vocab_size),
        resolve_max_tokens(body.max_completion_tokens or body.max_tokens, len(prompt_ids), model.context),
        stop_strings(body), (body.top_logprobs or 0) if body.logprobs else None, constraint,
        cache_namespace(request.scope, body.cache_salt))
    shapes = ChatShapes(served.name, model.tokenizer, body.logprobs)
    return await respond(request, state, served, body, job, shapes, body.messages[-1].text())


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, state: State) -> Response:
    served = await state.served(body.model)
    if body.echo or body.suffix or (body.best_of or body.n) != body.n:
        raise APIError(400, "echo, suffix and best_of other than n are not supported", param="echo")
    model = served.model
    prompt_ids = await asyncio.to_thread(completion_prompt, model, body.prompt)
    job = GenerationJob(prompt_ids, sampling_params(body, model.config.vocab_size),
                        resolve_max_tokens(body.max_tokens, len(prompt_ids), model.context),
                        stop_strings(body), body.logprobs,
                        cache_namespace=cache_namespace(request.scope, body.cache_salt))
    shapes = CompletionShapes(served.name, model.tokenizer, body.logprobs is not None)
    return await respond(request, state, served, body, job, shapes,
                         body.prompt if isinstance(body.prompt, str) else "")


def completion_prompt(model: Model, prompt) -> list[int]:
    """The token ids of a completion prompt: a string, token ids, or a batch holding one of them."""
    if isinstance(prompt, str):
        ids = model.tokenize(prompt)
    elif all(isinstance(token, int) for token in prompt):
        ids = list(prompt)
    elif len(prompt) == 1:  # a batch of one prompt
        return completion_prompt(model, prompt[0])
    else:
        raise APIError(400, "send one prompt per request (batches of prompts are not supported)", param="prompt")
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    for token in ids:
        if token >= model.config.vocab_size:
            raise APIError(400, f"token id {token} is outside the vocabulary", param="prompt")
    return ids


def constraint_for(served: ServedModel, body: ChatCompletionRequest):
    """The per-sequence constraint factory of the request's response_format, or None; a bad schema is a 400."""
    form = body.response_format
    if form is None or form.type == "text":
        return None
    if form.type == "json_schema":
        if form.json_schema is None or form.json_schema.schema_ is None:
            raise APIError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format.json_schema")
        schema = form.json_schema.schema_
    else:
        schema = None  # json_object: any JSON object
    try:
        return served.grammars.json_schema(schema).constraint
    except RequestError as error:  # a refused schema; anything else the compiler raises is our bug (a 500)
        raise APIError(400, str(error), param="response_format") from error


class Exchange:
    """One generation request in flight: its choices as they grow, and its metrics and log line when it ends."""

    def __init__(self, request: Request, state: ServerState, job: GenerationJob, shapes, prompt_text: str):
        self.started = time.perf_counter()
        self.endpoint = request.url.path
        self.state, self.job, self.shapes, self.prompt_text = state, job, shapes, prompt_text
        self.choices = [Choice(index) for index in range(len(job.params))]
        self.first_token: float | None = None
        self.stream_status = 499  # a stream's outcome, unless it completes or ends with an error event

    async def steps(self, run: ChoiceRun) -> AsyncIterator[tuple[int, object]]:
        """The run's (choice index, step), recorded in the choices as they pass."""
        async for index, step in run.events():
            if self.first_token is None:
                self.first_token = time.perf_counter()
                self.state.metrics.time_to_first_token.observe(self.first_token - self.started)
            self.choices[index].steps.append(step)
            self.choices[index].finish_reason = step.finish_reason
            yield index, step

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.steps) for choice in self.choices)

    def finished(self, status: int) -> None:
        latency = time.perf_counter() - self.started
        metrics = self.state.metrics
        metrics.requests.labels(self.endpoint, str(status)).inc()
        metrics.latency.labels(self.endpoint).observe(latency)
        log.info("request id=%s endpoint=%s status=%d n=%d prompt_tokens=%d completion_tokens=%d "
                 "ttft=%.3fs latency=%.3fs%s", self.shapes.id, self.endpoint, status, len(self.choices),
                 len(self.job.prompt_ids), self.completion_tokens,
                 (self.first_token - self.started) if self.first_token is not None else -1, latency,
                 f" prompt={self.prompt_text!r}" if self.state.log_prompts else "")


async def respond(request: Request, state: ServerState, served: ServedModel, body, job: GenerationJob, shapes,
                  prompt_text: str) -> Response:
    """Submit the job's choices (a full queue is a 429 before any response starts), then answer or stream."""
    exchange = Exchange(request, state, job, shapes, prompt_text)
    try:
        run = ChoiceRun(served.engine, job)
        if body.stream:
            return AdmittedStream(run, exchange, stream(exchange, run, body.stream_options))
        await until_done_or_disconnected(request, exchange.steps(run))
    except Exception as error:
        failure = as_api_error(error)
        exchange.finished(failure.status)
        raise failure from error
    if not all(choice.finish_reason for choice in exchange.choices):
        exchange.finished(499)  # the client left; its sequences were cancelled
        return Response(status_code=499)
    exchange.finished(200)
    return JSONResponse(shapes.final(exchange.choices, len(job.prompt_ids), run.cached_tokens, run.draft_tokens))


class AdmittedStream(StreamingResponse):
    """The SSE answer of a submitted run: however the response ends (even before its first chunk, when the
    client is already gone), the run's sequences are cancelled and the request is counted once."""

    def __init__(self, run: ChoiceRun, exchange: Exchange, chunks: AsyncIterator[str]):
        super().__init__(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run, self.exchange = run, exchange

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.run.cancel()
            self.exchange.finished(self.exchange.stream_status)


async def stream(exchange: Exchange, run: ChoiceRun, options) -> AsyncIterator[str]:
    """The chunks of a streamed answer; an error after the headers travels as a final event."""
    shapes, job = exchange.shapes, exchange.job
    for choice in exchange.choices:
        first = shapes.first_chunk(choice.index)
        if first is not None:
            yield sse(first)
    try:
        async for index, step in exchange.steps(run):
            yield sse(shapes.chunk(index, step))
    except Exception as error:  # headers are sent: the error travels as an event
        failure = as_api_error(error)
        exchange.stream_status = failure.status
        yield sse(failure.body())
        return
    if options and options.include_usage:
        yield sse(shapes.usage_chunk(len(job.prompt_ids), exchange.completion_tokens, run.cached_tokens,
                                      run.draft_tokens))
    yield sse("[DONE]")
    exchange.stream_status = 200


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


# --- embeddings and tokenizer routes ----------------------------------------------------------------------

@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, state: State) -> Response:
    """Every input is an engine request (run in chunks beside the streams, under the queue bound); a client that
    leaves cancels them."""
    served = await state.served(body.model)
    inputs = await asyncio.to_thread(embedding_inputs, served.model, body.input)
    vectors: dict[int, np.ndarray] = {}

    async def collect() -> AsyncIterator[None]:
        async for index, vector in run_embeddings(served.engine, inputs):
            vectors[index] = vector[:body.dimensions] if body.dimensions else vector
            yield

    await until_done_or_disconnected(request, collect())  # errors are classified by the route (ClassifiedRoute)
    if len(vectors) < len(inputs):
        return Response(status_code=499)  # the client left; its inputs were cancelled
    data = [{"object": "embedding", "index": index,
             "embedding": base64.b64encode(vectors[index].astype(np.float32).tobytes()).decode()
             if body.encoding_format == "base64" else vectors[index].tolist()}
            for index in range(len(inputs))]
    tokens = sum(len(ids) for ids in inputs)
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def embedding_inputs(model: Model, raw) -> list[list[int]]:
    if isinstance(raw, str) or (raw and all(isinstance(token, int) for token in raw)):
        raw = [raw]
    if not raw or len(raw) > MAX_INPUTS:
        raise APIError(400, f"input must hold between 1 and {MAX_INPUTS} items", param="input")
    inputs = [model.tokenize(item) if isinstance(item, str) else list(item) for item in raw]
    for ids in inputs:
        if not ids or len(ids) > model.context or max(ids) >= model.config.vocab_size:
            raise APIError(400, f"each input needs 1 to {model.context} tokens from the vocabulary", param="input")
    return inputs


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, state: State) -> dict:
    served = await state.served(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "send exactly one of prompt and messages", param="prompt")
    model = served.model
    if body.messages is not None:
        ids = await asyncio.to_thread(served.chat_prompt, body.messages)
    else:
        ids = await asyncio.to_thread(model.tokenize, body.prompt, add_bos=None if body.add_special_tokens else False)
    return {"tokens": ids, "count": len(ids), "max_model_len": model.context}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, state: State) -> dict:
    served = await state.served(body.model)
    return {"prompt": served.model.detokenize(body.tokens)}
