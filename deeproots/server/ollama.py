"""The Ollama API on the same port: /api/chat, /api/generate (NDJSON streams), /api/embed, /api/embeddings,
/api/show, /api/version. Errors are Ollama's {"error": "message"} (errors.error_body, by path).

Chat and generate go through the shared chat path as every chat API does: ollama_request converts the body,
ollama_shapes writes the answer. Durations are nanoseconds, as Ollama reports them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .errors import APIError, ClassifiedRoute
from .model_routes import iso_time, ollama_model
from .ollama_request import (OllamaChatRequest, OllamaEmbeddingsRequest, OllamaEmbedRequest, OllamaGenerateRequest,
                             OllamaShowRequest, chat_fields, generate_fields, json_body, keep_alive_seconds)
from .ollama_shapes import GenerateShapes, OllamaShapes, nanoseconds, now
from .one_answer import answer
from .openai import embedding_inputs, embedding_vectors
from .pool import ServedModel
from .servable import ModelSource
from .state import State
from .translate import as_chat_request

OLLAMA_VERSION = "0.12.0"  # the Ollama release whose API this follows (think, tools, format schemas, /api/embed)
router = APIRouter(route_class=ClassifiedRoute)


async def served_for(state, body) -> ServedModel:
    """The model the body names, kept loaded after this request for its keep_alive (None: the server's default)."""
    return await state.served(body.model, keep_alive_seconds(body.keep_alive))


@router.post("/api/chat")
async def chat(body: Annotated[OllamaChatRequest, json_body(OllamaChatRequest)], request: Request,
               state: State) -> Response:
    served = await served_for(state, body)
    if not body.messages:  # Ollama's way to load a model: nothing to answer
        return JSONResponse({"model": served.name, "created_at": now(),
                             "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"})
    return await answer(request, state, served, as_chat_request(chat_fields(body)), OllamaShapes(served.name))


@router.post("/api/generate")
async def generate(body: Annotated[OllamaGenerateRequest, json_body(OllamaGenerateRequest)], request: Request,
                   state: State) -> Response:
    """A prompt (and system prompt) answered through the model's chat template."""
    served = await served_for(state, body)
    if not body.prompt:
        return JSONResponse({"model": served.name, "created_at": now(), "response": "", "done": True,
                             "done_reason": "load"})
    return await answer(request, state, served, as_chat_request(generate_fields(body)), GenerateShapes(served.name))


@router.get("/api/version")
async def version() -> dict:
    return {"version": OLLAMA_VERSION}


@router.post("/api/show")
async def show(body: Annotated[OllamaShowRequest, json_body(OllamaShowRequest)], state: State) -> dict:
    served = await state.served(body.model or body.name)
    return await asyncio.to_thread(model_card, served, state.pool.models.resolve(served.name))


def model_card(served: ServedModel, source: ModelSource) -> dict:
    """What Ollama's /api/show tells about a model: /api/tags' details, its file's scalar metadata (the header read
    once per model, source.summary), its chat template."""
    model, summary = served.model, source.summary
    metadata = {key: value for key, value in model.file.metadata.items() if isinstance(value, (str, int, float, bool))}
    architecture = summary.architecture
    return {
        "modelfile": f"FROM {model.path}\n", "parameters": "", "license": "",
        "template": model.template.source if model.template is not None else "",
        "details": ollama_model(source)["details"],
        "model_info": {**metadata, "general.architecture": architecture, "general.parameter_count": summary.n_params,
                       f"{architecture}.context_length": model.context},
        "capabilities": ["completion", "embedding"] if model.template is not None else ["embedding"],
        "modified_at": iso_time(source.modified)}


@router.post("/api/embed")
async def embed(body: Annotated[OllamaEmbedRequest, json_body(OllamaEmbedRequest)], request: Request,
                state: State) -> Response:
    """Embeddings of one text or several; with `truncate` (the default) a text longer than the context is cut."""
    started = time.perf_counter()
    served = await served_for(state, body)
    texts = [body.input] if isinstance(body.input, str) else body.input
    inputs = await asyncio.to_thread(embedding_ids, served, texts, body.truncate)
    vectors = await embedding_vectors(request, served, inputs, body.dimensions)
    if vectors is None:
        return Response(status_code=499)  # the client left; its inputs were cancelled
    return JSONResponse({"model": served.name, "embeddings": [vector.tolist() for vector in vectors],
                         "total_duration": nanoseconds(time.perf_counter() - started), "load_duration": 0,
                         "prompt_eval_count": sum(len(ids) for ids in inputs)})


@router.post("/api/embeddings")
async def embeddings(body: Annotated[OllamaEmbeddingsRequest, json_body(OllamaEmbeddingsRequest)], request: Request,
                     state: State) -> Response:
    """The legacy route: one prompt, one vector."""
    served = await served_for(state, body)
    inputs = await asyncio.to_thread(embedding_ids, served, [body.prompt], True)
    vectors = await embedding_vectors(request, served, inputs, None)
    if vectors is None:
        return Response(status_code=499)
    return JSONResponse({"embedding": vectors[0].tolist()})


def embedding_ids(served: ServedModel, texts: list[str], truncate: bool) -> list[list[int]]:
    model = served.model
    if not texts:
        raise APIError(400, "input must hold at least one text", param="input")
    if truncate:
        return embedding_inputs(model, [model.tokenize(text)[:model.context] for text in texts])
    return embedding_inputs(model, texts)
