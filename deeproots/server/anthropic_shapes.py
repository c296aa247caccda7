"""Anthropic Messages response shapes: the message object, and the SSE events of a streamed one (message_start,
content_block_start / _delta / _stop with text_delta, thinking_delta and input_json_delta, message_delta,
message_stop), written from the shared chat path's events and answer (chat_output.py).

Usage follows Anthropic's split: input_tokens counts the prompt tokens that ran, cache_read_input_tokens those
taken from the prefix cache.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .chat import ChatUsage
from .chat_output import ChatAnswer, ChatEvent, ReasoningDelta, TextDelta, ToolCallDelta, ToolCallStart
from .errors import APIError
from .translate import call_arguments

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens - cached_tokens, "output_tokens": completion_tokens,
            "cache_read_input_tokens": cached_tokens, "cache_creation_input_tokens": 0}


def usage_of(counts: ChatUsage) -> dict[str, int]:
    return usage(counts.prompt_tokens, counts.completion_tokens, counts.cached_tokens)


class MessageShapes:
    """One answer as an Anthropic message, whole (final) or as the events of a stream (opening, chunks, closing)."""
    media_type = "text/event-stream"

    def __init__(self, model: str):
        self.id, self.model = f"msg_{uuid.uuid4().hex[:24]}", model
        self.prompt_tokens = 0  # for message_start, before the usage is known
        self.blocks: list[str] = []  # the type of each content block opened so far
        self.tool_blocks: dict[int, int] = {}  # a tool call's index -> its content block's index
        self.open = False  # whether the last block is still open

    def message(self, content: list[dict[str, Any]], stop_reason: str | None, usage_fields: dict[str, int]) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": None, "usage": usage_fields}

    def started(self, exchange) -> None:
        self.prompt_tokens = exchange.prompt_tokens

    def final(self, answer: ChatAnswer, counts: ChatUsage) -> dict:
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
        if answer.content or not answer.tool_calls:
            content.append({"type": "text", "text": answer.content})
        content += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call_arguments(call.arguments)}
                    for call in answer.tool_calls]
        return self.message(content, STOP_REASONS[answer.finish_reason], usage_of(counts))

    def opening(self) -> str:  # the prefix-cache hits are known at the end (message_delta's usage replaces these)
        return event("message_start", {"message": self.message([], None, usage(self.prompt_tokens, 0, 0))})

    def chunks(self, chat_event: ChatEvent) -> str:
        """The events one chat event makes: a delta, after the block it belongs to is opened (closing the last)."""
        if isinstance(chat_event, ToolCallStart):
            opened = self._start({"type": "tool_use", "id": chat_event.id, "name": chat_event.name, "input": {}})
            self.tool_blocks[chat_event.index] = len(self.blocks) - 1
            return opened
        if isinstance(chat_event, ToolCallDelta):
            return self._delta(self.tool_blocks[chat_event.index],
                               {"type": "input_json_delta", "partial_json": chat_event.arguments})
        if not chat_event.text:
            return ""
        kind, delta = ("thinking", {"type": "thinking_delta", "thinking": chat_event.text}) \
            if isinstance(chat_event, ReasoningDelta) else ("text", {"type": "text_delta", "text": chat_event.text})
        opened = "" if self.open and self.blocks[-1] == kind else self._start(
            {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""})
        return opened + self._delta(len(self.blocks) - 1, delta)

    def closing(self, answer: ChatAnswer, counts: ChatUsage) -> str:
        text = "" if self.blocks else self._start({"type": "text", "text": ""})  # a message has a block at least
        return text + self._stop() + event("message_delta", {
            "delta": {"stop_reason": STOP_REASONS[answer.finish_reason], "stop_sequence": None},
            "usage": usage_of(counts)}) + event("message_stop", {})

    def error(self, failure: APIError) -> str:
        """An error after the stream began, as Anthropic sends it (the client raises on an `error` event)."""
        return f"event: error\ndata: {json.dumps(failure.body('/v1/messages'))}\n\n"

    def _start(self, block: dict[str, Any]) -> str:
        closed = self._stop()
        self.blocks.append(block["type"])
        self.open = True
        return closed + event("content_block_start", {"index": len(self.blocks) - 1, "content_block": block})

    def _delta(self, index: int, delta: dict[str, Any]) -> str:
        return event("content_block_delta", {"index": index, "delta": delta})

    def _stop(self) -> str:
        if not self.open:
            return ""
        self.open = False
        return event("content_block_stop", {"index": len(self.blocks) - 1})
