"""The OpenAI-compatible HTTP API: routes only; the engine does the work, responses.py the shapes.

Nothing here is model-specific: prompts go through the model's own tokenizer and chat template. Every route is a
module-level function of `router`; it finds the ServerState (state.py) with the `State` dependency and its model
with `state.served(body.model)` (the pool, pool.py); the model listings are model_routes.py's. Tokenizing and
template rendering run off the event loop: a huge prompt must not freeze the other requests (nor /health).
"""

from __future__ import annotations

import asyncio
import base64
from typing import AsyncIterator

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..model import Model
from . import model_routes
from .chat import start_chat
from .errors import APIError, ClassifiedRoute, error_response, install_error_handlers
from .exchange import Exchange, until_done_or_disconnected
from .generation import GenerationJob, resolve_max_tokens, run_embeddings, sampling_params, stop_strings
from .middleware import cache_namespace
from .pool import ServedModel
from .responses import ChatShapes, CompletionShapes, chat_chunks, sse
from .schemas import (MAX_INPUTS, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
                      TokenizeRequest)
from .state import ServerState, State


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="deeproots", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.deeproots = state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(model_routes.router)
    return app


router = APIRouter(route_class=ClassifiedRoute)


# --- service routes ---------------------------------------------------------------------------------------

@router.get("/health")
async def health(state: State) -> Response:
    trouble = state.pool.trouble
    if trouble is not None:
        return error_response(503, trouble, type="server_error", code="engine_dead")
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


# --- generation -------------------------------------------------------------------------------------------

@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    served = await state.served(body.model)
    shapes = ChatShapes(served.name, served.model.tokenizer, body.logprobs)
    run = await start_chat(request, state, served, body, shapes.id)
    if body.stream:
        return run.stream(lambda items: chat_chunks(items, shapes, run.n, body.stream_options),
                          lambda error: sse(error.body()))
    result = await run.complete()
    if result is None:
        return Response(status_code=499)  # the client left; its sequences were cancelled
    answers, usage = result
    return JSONResponse(shapes.final(answers, run.exchange.choices, usage))


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
    exchange = Exchange.start(request, state, served.engine, job, shapes.id,
                              body.prompt if isinstance(body.prompt, str) else "")
    if body.stream:
        return exchange.stream_response(completion_chunks(exchange, shapes, body.stream_options),
                                        lambda error: sse(error.body()))
    if not await exchange.collect(exchange.steps()):
        return Response(status_code=499)  # the client left; its sequences were cancelled
    return JSONResponse(shapes.final(exchange.choices, exchange.prompt_tokens, exchange.cached_tokens,
                                     exchange.draft_tokens))


async def completion_chunks(exchange: Exchange, shapes: CompletionShapes, options) -> AsyncIterator[str]:
    async for index, step in exchange.steps():
        yield sse(shapes.chunk(index, step))
    if options and options.include_usage:
        yield sse(shapes.usage_chunk(exchange.prompt_tokens, exchange.completion_tokens, exchange.cached_tokens,
                                     exchange.draft_tokens))
    yield sse("[DONE]")


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


# --- embeddings and tokenizer routes ----------------------------------------------------------------------

@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, state: State) -> Response:
    """Every input is an engine request (run in chunks beside the streams, under the queue bound); a client that
    leaves cancels them."""
    served = await state.served(body.model)
    inputs = await asyncio.to_thread(embedding_inputs, served.model, body.input)
    vectors = await embedding_vectors(request, served, inputs, body.dimensions)
    if vectors is None:
        return Response(status_code=499)  # the client left; its inputs were cancelled
    data = [{"object": "embedding", "index": index,
             "embedding": base64.b64encode(vector.astype(np.float32).tobytes()).decode()
             if body.encoding_format == "base64" else vector.tolist()}
            for index, vector in enumerate(vectors)]
    tokens = sum(len(ids) for ids in inputs)
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def embedding_vectors(request: Request, served: ServedModel, inputs: list[list[int]],
                            dimensions: int | None) -> list[np.ndarray] | None:
    """The inputs' vectors in order, each (dimensions or d_model,); None when the client left first."""
    vectors: dict[int, np.ndarray] = {}

    async def collect() -> AsyncIterator[None]:
        async for index, vector in run_embeddings(served.engine, inputs):
            vectors[index] = vector[:dimensions] if dimensions else vector
            yield

    await until_done_or_disconnected(request, collect())  # errors are classified by the route (ClassifiedRoute)
    return [vectors[index] for index in range(len(inputs))] if len(vectors) == len(inputs) else None


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
