"""What a chat answer is made of, independent of any API: the events a choice streams and the answer it ends as.

Every chat-like API (OpenAI chat completions, Anthropic Messages, OpenAI Responses, Ollama) reads these from the
shared chat run (chat.py) and writes them in its own shapes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class TextDelta:
    """A piece of the answer's visible text."""
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's thinking (<think>...</think>), never part of the content."""
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A call begins: index is its position among this choice's calls (0, 1, ...)."""
    index: int
    id: str  # "call_<24 hex>"
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A fragment of that call's arguments, as JSON text; the fragments concatenate to valid JSON."""
    index: int
    arguments: str


ChatEvent = TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass
class ChatAnswer:
    """One choice, complete."""
    content: str
    reasoning: str | None
    tool_calls: list[ToolCall]
    finish_reason: str  # "stop" | "length" | "tool_calls"


def new_id(prefix: str, separator: str = "_") -> str:
    """A fresh id in the shape the APIs use: "call_<24 hex>", "msg_...", "chatcmpl-..." (OpenAI's older ids)."""
    return f"{prefix}{separator}{uuid.uuid4().hex[:24]}"


def new_call_id() -> str:
    return new_id("call")
