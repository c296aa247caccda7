"""Anthropic Messages request bodies (POST /v1/messages, /v1/messages/count_tokens), bounded like the OpenAI ones,
and their conversion into the OpenAI chat fields the shared chat path runs.

tool_use blocks become an assistant message's tool_calls, tool_result blocks become tool messages (ahead of the
user's text in the same turn: they answer the previous turn's calls), tool_choice any/tool become required/a
named function, thinking becomes the template's enable_thinking switch, output_config.format the JSON-schema
constraint. An assistant turn's thinking blocks become its reasoning_content (the templates that read it, Qwen 3's,
write it back; the others drop it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from .schemas import MAX_STOPS, MAX_TOKENS_LIMIT, Body, StopString
from .translate import function_tool, tool_call


class TextBlock(Body):
    type: Literal["text"]
    text: str


class ToolUseBlock(Body):
    type: Literal["tool_use"]
    id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    input: dict[str, Any]


class ToolResultBlock(Body):
    type: Literal["tool_result"]
    tool_use_id: str = Field(max_length=256)
    content: str | list[TextBlock] = ""
    is_error: bool = False

    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "".join(block.text for block in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(Body):
    type: Literal["thinking", "redacted_thinking"]
    thinking: str = ""  # redacted thinking has none we can read


ContentBlock = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock], Field(discriminator="type")]


class AnthropicMessage(Body):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class AnthropicTool(Body):
    type: Literal["custom"] | None = None  # server tools (web search ...) have other types: refused
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, max_length=128)
    disable_parallel_tool_use: bool = False


class Thinking(Body):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT)


class OutputFormat(Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Body):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class MessagesInput(Body):
    """What the prompt is made of: all count_tokens needs."""
    model: str = Field(max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=1024)
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1, le=MAX_TOKENS_LIMIT)
    stop_sequences: list[StopString] | None = Field(None, max_length=MAX_STOPS)
    output_config: OutputConfig | None = None
    # sampling: dropped from the newest clients' signatures, still sent by others (and by extra_body)
    temperature: float = Field(1.0, ge=0.0, le=1.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1 << 20)
    stream: bool = False


def chat_fields(request: MessagesInput) -> dict[str, Any]:
    """The OpenAI chat fields of an Anthropic request (sampling fields only when it is a MessagesRequest)."""
    fields: dict[str, Any] = {"model": request.model, "messages": chat_messages(request)}
    if request.tools:
        fields["tools"] = [function_tool(tool.name, tool.description, tool.input_schema) for tool in request.tools]
    if request.tool_choice is not None:
        fields.update(tool_choice_fields(request.tool_choice))
    if request.thinking is not None:
        fields["chat_template_kwargs"] = {"enable_thinking": request.thinking.type != "disabled"}
    if isinstance(request, MessagesRequest):
        fields.update(max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
                      top_k=request.top_k, stream=request.stream)
        if request.stop_sequences:
            fields["stop"] = request.stop_sequences
        fields.update(output_fields(request.output_config))
    return fields


def output_fields(config: OutputConfig | None) -> dict[str, Any]:
    """output_config: a JSON schema the answer must follow, and the effort (reasoning_effort, capped at high)."""
    fields: dict[str, Any] = {}
    if config is not None and config.format is not None:
        fields["response_format"] = {"type": "json_schema", "json_schema": {"schema": config.format.schema_}}
    if config is not None and config.effort is not None:
        fields["reasoning_effort"] = "high" if config.effort in ("xhigh", "max") else config.effort
    return fields


def chat_messages(request: MessagesInput) -> list[dict[str, Any]]:
    system = request.system if isinstance(request.system, str) else "".join(b.text for b in request.system or [])
    messages = [{"role": "system", "content": system}] if system else []
    for message in request.messages:
        messages.extend(turn_messages(message))
    return messages


def turn_messages(message: AnthropicMessage) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI messages: tool results first, then the text (and an assistant's calls)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    blocks = message.content
    text = [{"type": "text", "text": block.text} for block in blocks if isinstance(block, TextBlock)]
    results = [{"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()}
               for block in blocks if isinstance(block, ToolResultBlock)]
    calls = [tool_call(block.id, block.name, block.input) for block in blocks if isinstance(block, ToolUseBlock)]
    thinking = "".join(block.thinking for block in blocks if isinstance(block, ThinkingBlock))
    turn: dict[str, Any] = {"role": message.role, "content": text}
    if calls:
        turn["tool_calls"] = calls
    if thinking and message.role == "assistant":
        turn["reasoning_content"] = thinking
    return results + ([turn] if text or calls or not results else [])


def tool_choice_fields(choice: ToolChoice) -> dict[str, Any]:
    fields: dict[str, Any] = {"parallel_tool_calls": not choice.disable_parallel_tool_use}
    if choice.type == "tool":
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name or ""}}
    else:
        fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return fields
