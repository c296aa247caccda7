"""The OpenAI-compatible HTTP API: routes only; the engine does the work, responses.py the shapes.

Nothing here is model-specific: prompts go through the model's own tokenizer and chat template.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine import Engine
from ..engine.grammar import GrammarCompiler
from ..model import Model
from .errors import APIError, error_response, install_error_handlers
from .generation import (Choice, GenerationJob, resolve_max_tokens, run_choices, run_embeddings, sampling_params,
                         stop_strings)
from .metrics import ServerMetrics
from .middleware import cache_namespace
from .responses import ChatShapes, CompletionShapes, sse
from .schemas import (MAX_INPUTS, ChatCompletionRequest, ChatMessage, CompletionRequest, DetokenizeRequest,
                      EmbeddingRequest, TokenizeRequest)

log = logging.getLogger("deeproots.server")


@dataclass
class ServerState:
    model: Model
    engine: Engine
    served_name: str
    log_prompts: bool = False

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine)
        self.grammars = GrammarCompiler(self.model.tokenizer, self.model.config.vocab_size)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.served_name!r}",
                           param="model", code="model_not_found")

    def chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        # Only the template's markup becomes control tokens; what the client wrote stays text.
        return self.model.apply_chat_template([{"role": m.role, "content": m.text()} for m in messages],
                                              tokenize=True)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="deeproots", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.deeproots = state
    install_error_handlers(app)
    model, engine, metrics = state.model, state.engine, state.metrics

    @app.get("/health")
    async def health() -> Response:
        if not engine.alive:
            return error_response(503, "the engine loop is not running", type="server_error", code="engine_dead")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [{"id": state.served_name, "object": "model", "created": 0,
                                             "owned_by": "deeproots", "max_model_len": model.context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        state.check_model(body.model)
        prompt_ids = state.chat_prompt(body.messages)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        job = GenerationJob(
            prompt_ids, sampling_params(body, model.config.vocab_size),
            resolve_max_tokens(body.max_completion_tokens or body.max_tokens, len(prompt_ids), model.context),
            stop_strings(body), (body.top_logprobs or 0) if body.logprobs else None, constraint_for(body),
            cache_namespace(request.scope, body.cache_salt))
        shapes = ChatShapes(state.served_name, model.tokenizer, body.logprobs)
        return await respond(request, body, job, shapes, describe(body.messages))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        state.check_model(body.model)
        if body.echo or body.suffix or (body.best_of or body.n) != body.n:
            raise APIError(400, "echo, suffix and best_of other than n are not supported", param="echo")
        prompt_ids = completion_prompt(body.prompt)
        job = GenerationJob(prompt_ids, sampling_params(body, model.config.vocab_size),
                            resolve_max_tokens(body.max_tokens, len(prompt_ids), model.context),
                            stop_strings(body), body.logprobs,
                            cache_namespace=cache_namespace(request.scope, body.cache_salt))
        shapes = CompletionShapes(state.served_name, model.tokenizer, body.logprobs is not None)
        return await respond(request, body, job, shapes, body.prompt if isinstance(body.prompt, str) else "")

    def completion_prompt(prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = model.tokenize(prompt)
        elif all(isinstance(token, int) for token in prompt):
            ids = list(prompt)
        elif len(prompt) == 1:  # a batch of one prompt
            return completion_prompt(prompt[0])
        else:
            raise APIError(400, "send one prompt per request (batches of prompts are not supported)", param="prompt")
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        for token in ids:
            if token >= model.config.vocab_size:
                raise APIError(400, f"token id {token} is outside the vocabulary", param="prompt")
        return ids

    def constraint_for(body: ChatCompletionRequest):
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
            return state.grammars.json_schema(schema).constraint
        except Exception as error:
            raise APIError(400, str(error), param="response_format") from error

    def describe(messages: list[ChatMessage]) -> str:
        return messages[-1].text()

    async def respond(request: Request, body, job: GenerationJob, shapes, prompt_text: str) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path
        choices = [Choice(index) for index in range(len(job.params))]
        first_token: list[float] = []

        def finished(status: int) -> None:
            latency = time.perf_counter() - started
            produced = sum(len(choice.steps) for choice in choices)
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(latency)
            log.info("request id=%s endpoint=%s status=%d n=%d prompt_tokens=%d completion_tokens=%d "
                     "ttft=%.3fs latency=%.3fs%s", shapes.id, endpoint, status, len(choices), len(job.prompt_ids),
                     produced, (first_token[0] - started) if first_token else -1, latency,
                     f" prompt={prompt_text!r}" if state.log_prompts else "")

        async def events() -> AsyncIterator[tuple[int, object]]:
            async for index, step in run_choices(engine, job):
                if not first_token:
                    first_token.append(time.perf_counter())
                    metrics.time_to_first_token.observe(first_token[0] - started)
                choices[index].steps.append(step)
                choices[index].finish_reason = step.finish_reason
                yield index, step

        if body.stream:
            return StreamingResponse(stream(events(), shapes, body, job, choices, finished),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            await until_done_or_disconnected(request, events())
        except APIError as error:
            finished(error.status)
            raise
        if not all(choice.finish_reason for choice in choices):
            finished(499)  # the client left; its sequences were cancelled
            return Response(status_code=499)
        finished(200)
        return JSONResponse(shapes.final(choices, len(job.prompt_ids), job.cached_tokens))

    async def stream(events, shapes, body, job: GenerationJob, choices: list[Choice], finished) -> AsyncIterator[str]:
        status = 499  # unless the stream completes
        try:
            for choice in choices:
                first = shapes.first_chunk(choice.index)
                if first is not None:
                    yield sse(first)
            async for index, step in events:
                yield sse(shapes.chunk(index, step))
            if body.stream_options and body.stream_options.include_usage:
                yield sse(shapes.usage_chunk(len(job.prompt_ids), sum(len(choice.steps) for choice in choices),
                                             job.cached_tokens))
            yield sse("[DONE]")
            status = 200
        except APIError as error:  # headers are sent: the error travels as an event
            status = error.status
            yield sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                 "code": error.code}})
        finally:
            await events.aclose()  # cancels the engine sequences when the client went away
            finished(status)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        state.check_model(body.model)
        inputs = embedding_inputs(body.input)
        vectors: dict[int, np.ndarray] = {}

        async def collect() -> AsyncIterator[None]:
            async for index, vector in run_embeddings(engine, inputs):
                vectors[index] = vector[:body.dimensions] if body.dimensions else vector
                yield

        await until_done_or_disconnected(request, collect())
        if len(vectors) < len(inputs):
            return Response(status_code=499)  # the client left; its inputs were cancelled
        data = [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(vectors[index].astype(np.float32).tobytes()).decode()
                 if body.encoding_format == "base64" else vectors[index].tolist()}
                for index in range(len(inputs))]
        tokens = sum(len(ids) for ids in inputs)
        return JSONResponse({"object": "list", "data": data, "model": state.served_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def embedding_inputs(raw) -> list[list[int]]:
        if isinstance(raw, str) or (raw and all(isinstance(token, int) for token in raw)):
            raw = [raw]
        if not raw or len(raw) > MAX_INPUTS:
            raise APIError(400, f"input must hold between 1 and {MAX_INPUTS} items", param="input")
        inputs = [model.tokenize(item) if isinstance(item, str) else list(item) for item in raw]
        for ids in inputs:
            if not ids or len(ids) > model.context or max(ids) >= model.config.vocab_size:
                raise APIError(400, f"each input needs 1 to {model.context} tokens from the vocabulary", param="input")
        return inputs

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "send exactly one of prompt and messages", param="prompt")
        if body.messages is not None:
            ids = state.chat_prompt(body.messages)
        else:
            ids = model.tokenize(body.prompt, add_bos=None if body.add_special_tokens else False)
        return {"tokens": ids, "count": len(ids), "max_model_len": model.context}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        state.check_model(body.model)
        return {"prompt": model.detokenize(body.tokens)}

    return app


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
