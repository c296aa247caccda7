"""Other APIs' requests become the one internal request, the OpenAI ChatCompletionRequest, so every API shares its
validation, prompt, sampling and constraints. Each API's converter builds the OpenAI fields; this validates them."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .errors import invalid_body_error
from .schemas import ChatCompletionRequest


def as_chat_request(fields: dict[str, Any]) -> ChatCompletionRequest:
    """The validated request, or a 400 naming the (OpenAI) field that was refused."""
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as error:
        raise invalid_body_error(error) from None


def function_tool(name: str, description: str | None, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """An OpenAI chat `tools` entry."""
    function: dict[str, Any] = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def tool_call(call_id: str, name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """An OpenAI assistant message's `tool_calls` entry; arguments as JSON text."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def call_arguments(text: str) -> dict[str, Any]:
    """A finished call's arguments (JSON text of an object, as the shared chat path guarantees) as an object."""
    return json.loads(text)
