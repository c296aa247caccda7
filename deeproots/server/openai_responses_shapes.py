"""OpenAI Responses shapes: the response object, and the SSE events of a streamed one, written from the shared
chat path's events and answer (chat_output.py).

The output is a reasoning item (the model's thinking, if any), a message item (the text) and a function_call item
per call, in the order they were produced. A stream numbers its events (sequence_number) and ends with
response.completed, or response.incomplete when max_output_tokens cut the answer.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .chat import ChatUsage
from .chat_output import ChatAnswer, ChatEvent, ReasoningDelta, ToolCallDelta, ToolCallStart, new_id
from .errors import APIError
from .openai_responses_request import NamedFunction, ResponsesRequest


ITEM_PREFIXES = {"reasoning": "rs", "message": "msg", "function_call": "fc"}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    """A message item; text None: just opened, no content yet."""
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [] if text is None else [text_part(text)]}


def function_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def usage(counts: ChatUsage) -> dict[str, Any]:
    """Reasoning tokens are not counted apart from the answer's (0)."""
    return {"input_tokens": counts.prompt_tokens,
            "input_tokens_details": {"cached_tokens": counts.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": counts.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts.prompt_tokens + counts.completion_tokens}


class OpenItem:
    """The output item a stream is writing: its kind, position, id and text (or arguments) so far."""

    def __init__(self, kind: str, index: int, item_id: str, call_id: str = "", name: str = ""):
        self.kind, self.index, self.id, self.call_id, self.name = kind, index, item_id, call_id, name
        self.text = ""

    def whole(self, status: str) -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text)
        if self.kind == "message":
            return message_item(self.id, self.text, status)
        return function_item(self.id, self.call_id, self.name, self.text, status)


class ResponseShapes:
    """One answer as a Responses API response, whole (final) or as the events of a stream."""
    media_type = "text/event-stream"

    def __init__(self, model: str, request: ResponsesRequest):
        self.id, self.created, self.model, self.request = new_id("resp"), int(time.time()), model, request
        self.sequence = 0
        self.done: list[dict[str, Any]] = []  # the stream's finished output items, in order
        self.current: OpenItem | None = None
        self.calls: dict[int, OpenItem] = {}  # a tool call's index -> its item
        self.cut = False  # whether max_output_tokens cut the item being written (known at the end)

    def response(self, output: list[dict], status: str, usage_fields: dict | None) -> dict[str, Any]:
        request = self.request
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
                "model": self.model, "output": output,
                "parallel_tool_calls": request.parallel_tool_calls is not False, "previous_response_id": None,
                "reasoning": {"effort": request.reasoning.effort if request.reasoning else None, "summary": None},
                "store": False, "temperature": request.temperature, "top_p": request.top_p,
                "text": request.text.model_dump(by_alias=True, exclude_none=True) if request.text and
                request.text.format else {"format": {"type": "text"}},
                "tool_choice": request.tool_choice.model_dump() if isinstance(request.tool_choice, NamedFunction)
                else request.tool_choice or "auto",
                "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or []],
                "truncation": "disabled", "usage": usage_fields, "user": None, "metadata": request.metadata or {}}

    def started(self, exchange) -> None:
        pass

    def final(self, answer: ChatAnswer, counts: ChatUsage) -> dict:
        output = [reasoning_item(new_id("rs"), answer.reasoning)] if answer.reasoning else []
        if answer.content or not answer.tool_calls:
            output.append(message_item(new_id("msg"), answer.content))
        output += [function_item(new_id("fc"), call.id, call.name, call.arguments) for call in answer.tool_calls]
        if answer.finish_reason == "length" and "status" in output[-1]:
            output[-1]["status"] = "incomplete"  # the item max_output_tokens cut
        return self.response(output, status(answer), usage(counts))

    # --- a stream ---------------------------------------------------------------------------------------------

    def opening(self) -> str:
        response = self.response([], "in_progress", None)
        return self._event("response.created", response=response) + \
            self._event("response.in_progress", response=response)

    def chunks(self, chat_event: ChatEvent) -> str:
        if isinstance(chat_event, ToolCallStart):
            item = self.calls[chat_event.index] = OpenItem("function_call", self._next_index(), new_id("fc"),
                                                           chat_event.id, chat_event.name)
            return self._close() + self._open(item)
        if isinstance(chat_event, ToolCallDelta):
            item = self.calls[chat_event.index]
            item.text += chat_event.arguments
            return self._event("response.function_call_arguments.delta", item_id=item.id,
                               output_index=item.index, delta=chat_event.arguments)
        if not chat_event.text:
            return ""
        kind = "reasoning" if isinstance(chat_event, ReasoningDelta) else "message"
        opened = ""
        if self.current is None or self.current.kind != kind:
            opened = self._close() + self._open(OpenItem(kind, self._next_index(), new_id(ITEM_PREFIXES[kind])))
        self.current.text += chat_event.text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        return opened + self._event(name, item_id=self.current.id, output_index=self.current.index,
                                    content_index=0, delta=chat_event.text, **extra)

    def closing(self, answer: ChatAnswer, counts: ChatUsage) -> str:
        self.cut = answer.finish_reason == "length"
        chunks = self._close()
        if not self.done:  # an empty answer is still one (empty) message
            chunks += self._open(OpenItem("message", 0, new_id("msg"))) + self._close()
        state = status(answer)
        return chunks + self._event(f"response.{state}", response=self.response(self.done, state, usage(counts)))

    def error(self, failure: APIError) -> str:
        return self._event("error", code=failure.code or str(failure.status), message=failure.message,
                           param=failure.param)

    def _next_index(self) -> int:
        return len(self.done) + (self.current is not None)

    def _open(self, item: OpenItem) -> str:
        self.current = item
        if item.kind == "function_call":
            return self._event("response.output_item.added", output_index=item.index,
                               item=function_item(item.id, item.call_id, item.name, "", "in_progress"))
        added = message_item(item.id, None, "in_progress") if item.kind == "message" else \
            {"type": "reasoning", "id": item.id, "summary": [], "content": []}
        part = text_part("") if item.kind == "message" else {"type": "reasoning_text", "text": ""}
        return self._event("response.output_item.added", output_index=item.index, item=added) + \
            self._event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0,
                        part=part)

    def _close(self) -> str:
        item, self.current = self.current, None
        if item is None:
            return ""
        whole = item.whole("incomplete" if self.cut else "completed")
        self.done.append(whole)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            chunks = self._event("response.function_call_arguments.done", **where, name=item.name,
                                 arguments=item.text)
        else:
            part = whole["content"][0]
            done = self._event("response.output_text.done", **where, content_index=0, text=item.text,
                               logprobs=[]) if item.kind == "message" else \
                self._event("response.reasoning_text.done", **where, content_index=0, text=item.text)
            chunks = done + self._event("response.content_part.done", **where, content_index=0, part=part)
        return chunks + self._event("response.output_item.done", output_index=item.index, item=whole)

    def _event(self, kind: str, **payload) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def status(answer: ChatAnswer) -> str:
    return "incomplete" if answer.finish_reason == "length" else "completed"
