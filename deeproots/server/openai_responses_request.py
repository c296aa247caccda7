"""OpenAI Responses request bodies (POST /v1/responses), stateless, and their conversion into the chat fields the
shared chat path runs.

`instructions` becomes the system message; `input` is text (one user message) or items: messages (with or
without "type": "message"), function_call items (joined into one assistant message's tool_calls, after that
turn's text) and function_call_output items (tool messages). A reasoning item's text becomes the reasoning_content
of the assistant turn after it (the templates that read it, Qwen 3's, write it back). Nothing is stored, so
`previous_response_id` is refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from .errors import APIError
from .schemas import MAX_TOKENS_LIMIT, Body
from .translate import function_tool, tool_call


class InputText(Body):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(Body):
    type: Literal["function_call"]
    call_id: str = Field(max_length=256)
    name: str = Field(max_length=256)
    arguments: str


class FunctionCallOutputItem(Body):
    type: Literal["function_call_output"]
    call_id: str = Field(max_length=256)
    output: str | list[InputText]

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


class ReasoningText(Body):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(Body):
    type: Literal["reasoning"]
    content: list[ReasoningText] | None = None  # the summary is left aside: it is not what the model wrote


def item_kind(item: Any) -> str:
    """An item's tag: its "type", where a message may leave it out (the "easy" input message)."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return kind if isinstance(kind, str) else ""


InputItem = Annotated[Union[Annotated[MessageItem, Tag("message")], Annotated[FunctionCallItem, Tag("function_call")],
                            Annotated[FunctionCallOutputItem, Tag("function_call_output")],
                            Annotated[ReasoningItem, Tag("reasoning")]], Discriminator(item_kind)]


class FunctionTool(Body):
    type: Literal["function"]  # built-in tools (web search, file search ...) are refused
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(Body):
    type: Literal["function"]
    name: str = Field(max_length=128)


class TextFormat(Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str = Field("response", max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextOptions(Body):
    format: TextFormat | None = None


class Reasoning(Body):
    effort: Literal["minimal", "low", "medium", "high"] | None = None


class ResponsesRequest(Body):
    model: str = Field(max_length=256)
    input: str | list[InputItem] = Field(max_length=4096)
    instructions: str | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: Reasoning | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    previous_response_id: str | None = None  # refused: this server keeps no responses
    store: bool | None = None  # accepted; nothing is stored
    metadata: dict[str, str] | None = None


def chat_fields(request: ResponsesRequest) -> dict[str, Any]:
    if request.previous_response_id is not None:
        raise APIError(400, "this server keeps no responses: send the whole conversation in `input` instead of "
                            "previous_response_id", param="previous_response_id")
    fields: dict[str, Any] = {"model": request.model, "messages": chat_messages(request),
                              "max_tokens": request.max_output_tokens, "temperature": request.temperature,
                              "top_p": request.top_p, "stream": request.stream}
    if request.tools:
        fields["tools"] = [function_tool(tool.name, tool.description, tool.parameters) for tool in request.tools]
    if isinstance(request.tool_choice, NamedFunction):
        fields["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice.name}}
    elif request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    if request.text and request.text.format:
        fields["response_format"] = response_format(request.text.format)
    if request.reasoning and request.reasoning.effort:
        fields["reasoning_effort"] = request.reasoning.effort
    return fields


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = \
        [{"role": "system", "content": request.instructions}] if request.instructions else []
    items = [MessageItem(role="user", content=request.input)] if isinstance(request.input, str) else request.input
    reasoning = ""  # a reasoning item's text, for the assistant turn that follows it
    for item in items:
        if isinstance(item, ReasoningItem):
            reasoning += "".join(part.text for part in item.content or [])
            continue
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            if not messages or messages[-1]["role"] != "assistant":  # the calls join their turn's text
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(tool_call(item.call_id, item.name, item.arguments))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
        if reasoning and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"] = reasoning
        reasoning = ""
    return messages


def response_format(form: TextFormat) -> dict[str, Any]:
    if form.type == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": form.name, "schema": form.schema_, "strict": form.strict}}
    return {"type": form.type}
