"""Anthropic Messages response shapes: the message object, and the SSE events of a streamed one (message_start,
content_block_start / _delta / _stop with text_delta, thinking_delta and input_json_delta, message_delta,
message_stop), written from the shared chat path's events and answer (chat_output.py).

Usage follows Anthropic's split: input_tokens counts the prompt tokens that ran, cache_read_input_tokens those
taken from the prefix cache.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .chat import ChatUsage
from .chat_output import ChatAnswer, ChatEvent, ReasoningDelta, ToolCallDelta, ToolCallStart, new_id
from ..tokenizer import Tokenizer
from .errors import APIError
from .generation import Choice
from .translate import call_arguments

EMPTY_BLOCKS = {"thinking": {"type": "thinking", "thinking": "", "signature": ""}, "text": {"type": "text", "text": ""}}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def matched_stop(choice: Choice, tokenizer: Tokenizer, stops: Sequence[str]) -> str | None:
    """The stop sequence that ended the choice, or None when something else did (its end-of-turn token, the
    length): the generated tokens' text goes on, after the answer, with the first stop string that matched."""
    if choice.finish_reason != "stop" or not choice.steps or choice.steps[-1].token_id in tokenizer.stop_ids:
        return None
    rest = tokenizer.decode([step.token_id for step in choice.steps])[len(choice.text):]
    found = [stop for stop in stops if stop in rest]
    return min(found, key=rest.index) if found else None


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

    def __init__(self, model: str, tokenizer: Tokenizer | None = None, stop_sequences: Sequence[str] = ()):
        self.id, self.model = new_id("msg"), model
        self.tokenizer, self.stop_sequences = tokenizer, stop_sequences
        self.exchange = None  # the admitted run: its prompt length (for message_start) and its steps
        self.blocks: list[str] = []  # the type of each content block opened so far
        self.tool_blocks: dict[int, int] = {}  # a tool call's index -> its content block's index
        self.open = False  # whether the last block is still open

    def message(self, content: list[dict[str, Any]], stop: tuple[str | None, str | None],
                usage_fields: dict[str, int]) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop[0], "stop_sequence": stop[1], "usage": usage_fields}

    def started(self, exchange) -> None:
        self.exchange = exchange

    def stop(self, answer: ChatAnswer) -> tuple[str, str | None]:
        """(stop_reason, stop_sequence)"""
        matched = matched_stop(self.exchange.choices[0], self.tokenizer, self.stop_sequences) \
            if self.stop_sequences else None
        return ("stop_sequence", matched) if matched else (STOP_REASONS[answer.finish_reason], None)

    def final(self, answer: ChatAnswer, counts: ChatUsage) -> dict:
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
        if answer.content or not answer.tool_calls:
            content.append({"type": "text", "text": answer.content})
        content += [{"type": "tool_use", "id": call.id, "name": call.name, "input": call_arguments(call.arguments)}
                    for call in answer.tool_calls]
        return self.message(content, self.stop(answer), usage_of(counts))

    def opening(self) -> str:  # the prefix-cache hits are known at the end (message_delta's usage replaces these)
        return event("message_start", {"message": self.message([], (None, None),
                                                               usage(self.exchange.prompt_tokens, 0, 0))})

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
        opened = "" if self.open and self.blocks[-1] == kind else self._start(EMPTY_BLOCKS[kind])
        return opened + self._delta(len(self.blocks) - 1, delta)

    def closing(self, answer: ChatAnswer, counts: ChatUsage) -> str:
        text = "" if self.blocks else self._start(EMPTY_BLOCKS["text"])  # a message has a block at least
        stop_reason, stop_sequence = self.stop(answer)
        return text + self._stop() + event("message_delta", {
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
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
