"""Request bodies of the OpenAI-compatible API, with every numeric field bounded.

Pydantic rejects a bad field with its location, which the error handler turns into an OpenAI-style
400 naming the field. Defaults follow OpenAI (temperature 1, top_p 1, no top-k or min-p).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16  # choices per request
MAX_STOPS = 4  # as OpenAI
MAX_TOKENS_LIMIT = 1 << 20  # far above any context; the real cap is the context, checked per request
MAX_INPUTS = 64  # embeddings per request
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for completions (chat has none: until the model stops)
TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]
StopString = Annotated[str, Field(min_length=1, max_length=256)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as OpenAI-compatible servers do


class StreamOptions(Body):
    include_usage: bool = False


class SamplingFields(Body):
    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1 << 20)  # extension (as vLLM): 0 disables
    min_p: float = Field(0.0, ge=0.0, le=1.0)  # extension: 0 disables
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)  # extension, llama.cpp style; 1 disables
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(None, max_length=1024)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOPS)
    seed: int | None = Field(None, ge=0, le=(1 << 63) - 1 - MAX_N)  # choice i uses seed + i
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    cache_salt: str | None = Field(None, min_length=1, max_length=256)  # vLLM's: a prefix-cache namespace of its own


class TextPart(Body):
    type: Literal["text"]
    text: str


ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]  # as OpenAI's function names
MAX_TOOLS = 128  # as OpenAI


class FunctionCall(Body):
    name: ToolName
    arguments: str = Field("{}", max_length=1 << 20)  # JSON text of an object, as the model wrote it


class ToolCallPart(Body):
    """A call an assistant message made (sent back by the client with the rest of the conversation)."""
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCallPart] | None = Field(None, max_length=MAX_TOOLS)  # assistant
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)  # tool: the call it answers
    reasoning_content: str | None = None  # an assistant's earlier thinking, as we send it (for templates that read it)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JsonSchemaFormat(Body):
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(Body):
    name: ToolName
    description: str | None = Field(None, max_length=1 << 16)
    parameters: dict[str, Any] | None = None  # a JSON schema; None: no arguments
    strict: bool | None = None


class Tool(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: str = Field(max_length=256)


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None  # None: auto with tools
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, max_length=64)  # vLLM's: extra template variables


class CompletionRequest(SamplingFields):
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]] = Field(min_length=0)
    max_tokens: int = Field(COMPLETION_MAX_TOKENS, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def null_is_the_default(cls, value):
        return COMPLETION_MAX_TOKENS if value is None else value  # as OpenAI documents "max_tokens": null


class EmbeddingRequest(Body):
    model: str = Field(max_length=256)
    input: Union[str, list[str], list[TokenId], list[list[TokenId]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=1 << 16)
    user: str | None = Field(None, max_length=256)


class TokenizeRequest(Body):
    model: str | None = Field(None, max_length=256)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, max_length=1024)
    add_special_tokens: bool = True


class DetokenizeRequest(Body):
    model: str | None = Field(None, max_length=256)
    tokens: list[TokenId] = Field(max_length=1 << 20)
