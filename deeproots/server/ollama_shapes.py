"""Ollama response shapes for /api/chat and /api/generate: one object, or NDJSON lines of a stream, written from the
shared chat path's events and answer (chat_output.py).

A streamed line carries a piece of the content (or of the thinking); tool calls come whole, in one line after the
text, as Ollama sends them; the last line has done: true, the done_reason and the counts and durations
(nanoseconds; load_duration 0: the model is loaded when the server starts).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from .chat import ChatUsage
from .chat_output import ChatAnswer, ChatEvent, ReasoningDelta, TextDelta, new_id
from .errors import APIError
from .translate import call_arguments

DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}  # Ollama ends a call's turn with "stop"


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class OllamaShapes:
    """/api/chat's shapes: the answer in a `message`."""
    media_type = "application/x-ndjson"

    def __init__(self, model: str):
        self.id, self.model = new_id("ollama", "-"), model
        self.exchange = None  # the admitted run's clock: when it started and when its first token came

    def started(self, exchange) -> None:
        self.exchange = exchange

    def counts(self, usage: ChatUsage) -> dict[str, int]:
        """Token counts and durations (the prompt's: until the first token; the answer's: from it)."""
        ended = time.perf_counter()
        started = self.exchange.started
        first = self.exchange.first_token or ended
        return {"total_duration": nanoseconds(ended - started), "load_duration": 0,
                "prompt_eval_count": usage.prompt_tokens, "prompt_eval_duration": nanoseconds(first - started),
                "eval_count": usage.completion_tokens, "eval_duration": nanoseconds(ended - first)}

    def envelope(self, done: bool, **fields) -> dict[str, Any]:
        return {"model": self.model, "created_at": now(), **fields, "done": done}

    def piece(self, text: str = "", thinking: str | None = None, tool_calls: list | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {"message": message}

    def final(self, answer: ChatAnswer, usage: ChatUsage) -> dict[str, Any]:
        return self.envelope(True, **self.piece(answer.content, answer.reasoning, tool_calls(answer)),
                             done_reason=DONE_REASONS[answer.finish_reason], **self.counts(usage))

    def opening(self) -> str:
        return ""

    def chunks(self, chat_event: ChatEvent) -> str:
        if isinstance(chat_event, TextDelta) and chat_event.text:
            return line(self.envelope(False, **self.piece(chat_event.text)))
        if isinstance(chat_event, ReasoningDelta) and chat_event.text:
            return line(self.envelope(False, **self.piece(thinking=chat_event.text)))
        return ""  # a call's pieces: the call goes out whole at the end

    def closing(self, answer: ChatAnswer, usage: ChatUsage) -> str:
        calls = tool_calls(answer)
        called = line(self.envelope(False, **self.piece(tool_calls=calls))) if calls else ""
        return called + line(self.envelope(True, **self.piece(), done_reason=DONE_REASONS[answer.finish_reason],
                                           **self.counts(usage)))

    def error(self, failure: APIError) -> str:
        """An error after the stream began, as Ollama sends it (its client raises on a line with "error")."""
        return line({"error": failure.message})


class GenerateShapes(OllamaShapes):
    """/api/generate's shapes: the answer in `response` (and `thinking`)."""

    def piece(self, text: str = "", thinking: str | None = None, tool_calls: list | None = None) -> dict[str, Any]:
        return {"response": text, **({"thinking": thinking} if thinking else {})}


def tool_calls(answer: ChatAnswer) -> list[dict[str, Any]]:
    return [{"function": {"index": index, "name": call.name, "arguments": call_arguments(call.arguments)}}
            for index, call in enumerate(answer.tool_calls)]


def line(payload: dict[str, Any]) -> str:
    return json.dumps(payload) + "\n"
