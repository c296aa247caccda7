"""Ollama request bodies (/api/chat, /api/generate, /api/embed, /api/embeddings, /api/show) and their conversion
into the chat fields the shared chat path runs.

`options` map to our sampling with Ollama's own defaults where the request leaves one out (temperature 0.8, top_k
40, top_p 0.9, repeat_penalty 1.1: api/types.go DefaultOptions), `num_predict` to max_tokens (negative: until the
model stops or the context is full), `format` "json" or a schema to the JSON constraint, `think` to the template's
enable_thinking switch. Ollama's assistant tool calls carry no ids: each gets one here, and the tool messages
that follow answer them in order. `num_ctx` and the other runner options are accepted and ignored: the server's
--ctx holds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, Field, ValidationError

from ..errors import RequestError
from .errors import APIError, invalid_body_error
from .pool import parse_keep_alive
from .schemas import MAX_STOPS, MAX_TOKENS_LIMIT, Body, StopString
from .translate import tool_call


class Options(Body):
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_k: int = Field(40, ge=0, le=1 << 20)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.1, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-1, le=(1 << 63) - 1)  # -1: a random seed, as Ollama
    num_predict: int | None = Field(None, ge=-2, le=MAX_TOKENS_LIMIT)  # -1 and -2: no limit but the context
    stop: list[StopString] | None = Field(None, max_length=MAX_STOPS)
    num_ctx: int | None = Field(None, ge=1)  # accepted; the server's context holds


class OllamaFunctionCall(Body):
    name: str = Field(max_length=256)
    arguments: dict[str, Any]


class OllamaToolCall(Body):
    function: OllamaFunctionCall


class OllamaMessage(Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None  # an assistant's earlier thinking: its reasoning_content
    images: list[str] | None = Field(None, max_length=0)  # text models only
    tool_calls: list[OllamaToolCall] | None = Field(None, max_length=128)
    tool_name: str | None = None


KeepAlive = Annotated[float | str | None, Field(None)]
Format = Literal["", "json"] | dict[str, Any] | None
Think = bool | Literal["low", "medium", "high"] | None


class GenerationFields(Body):
    model: str = Field(max_length=256)
    format: Format = None
    options: Options = Field(default_factory=Options)
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: KeepAlive = None
    think: Think = None


class OllamaChatRequest(GenerationFields):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=1024)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)  # OpenAI's chat tools, as Ollama takes them


class OllamaGenerateRequest(GenerationFields):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = Field(None, max_length=0)
    raw: Literal[False] = False  # a prompt always goes through the model's chat template
    suffix: Literal[""] | None = None  # fill-in-the-middle is not supported
    template: Literal[""] | None = None  # the model file's chat template is the only one


class OllamaEmbedRequest(Body):
    model: str = Field(max_length=256)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1, le=1 << 16)
    keep_alive: KeepAlive = None


class OllamaEmbeddingsRequest(Body):  # the legacy /api/embeddings
    model: str = Field(max_length=256)
    prompt: str
    keep_alive: KeepAlive = None


class OllamaShowRequest(Body):
    model: str | None = Field(None, max_length=256)
    name: str | None = Field(None, max_length=256)  # the older spelling of `model`


def chat_fields(request: OllamaChatRequest) -> dict[str, Any]:
    fields = {"model": request.model, "messages": chat_messages(request.messages), **generation_fields(request)}
    if request.tools:
        fields["tools"] = request.tools
    return fields


def generate_fields(request: OllamaGenerateRequest) -> dict[str, Any]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages.append({"role": "user", "content": request.prompt})
    return {"model": request.model, "messages": messages, **generation_fields(request)}


def generation_fields(request: GenerationFields) -> dict[str, Any]:
    """The sampling, format and thinking fields both /api/chat and /api/generate take."""
    options = request.options
    fields: dict[str, Any] = {
        "temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p, "min_p": options.min_p,
        "repetition_penalty": options.repeat_penalty, "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty, "stream": request.stream,
        "seed": None if options.seed is None or options.seed < 0 else options.seed,
        "max_tokens": options.num_predict if options.num_predict and options.num_predict > 0 else None}
    if options.stop:
        fields["stop"] = options.stop
    if request.format == "json":
        fields["response_format"] = {"type": "json_object"}
    elif isinstance(request.format, dict):
        fields["response_format"] = {"type": "json_schema", "json_schema": {"schema": request.format}}
    if request.think is not None:
        fields["chat_template_kwargs"] = {"enable_thinking": request.think is not False}
    return fields


def chat_messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """OpenAI messages; each assistant call gets an id, and the tool messages after it answer the calls in order."""
    converted: list[dict[str, Any]] = []
    unanswered: list[str] = []  # ids of the calls no tool message has answered yet, oldest first
    for number, message in enumerate(messages):
        turn: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.thinking and message.role == "assistant":
            turn["reasoning_content"] = message.thinking
        if message.tool_calls:
            ids = [f"call_{number}_{index}" for index in range(len(message.tool_calls))]
            turn["tool_calls"] = [tool_call(call_id, call.function.name, call.function.arguments)
                                  for call_id, call in zip(ids, message.tool_calls)]
            unanswered = ids
        if message.role == "tool":
            if not unanswered:
                raise APIError(400, f"messages[{number}]: a tool message must follow an assistant message's "
                                    "tool_calls (one tool message per call)", param=f"messages.{number}")
            turn["tool_call_id"] = unanswered.pop(0)
        converted.append(turn)
    return converted


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Ollama's keep_alive in seconds (pool.parse_keep_alive's forms; negative: -1, forever); None: the server's
    default."""
    if value is None or value == "":
        return None
    try:
        return parse_keep_alive(value)
    except RequestError as error:
        raise APIError(400, str(error), param="keep_alive") from None


def json_body(schema: type[BaseModel]):
    """A body read as JSON whatever Content-Type it came with: Ollama's own examples (curl -d) send none."""
    async def parse(request: Request) -> BaseModel:
        try:
            return schema.model_validate_json(await request.body())
        except ValidationError as error:
            raise invalid_body_error(error) from None

    return Depends(parse)
