"""The Anthropic, Responses and Ollama writers, fed the shared chat path's events: what the official clients'
own stream accumulators and response models make of them (anthropic's accumulate_event, openai's
ResponseStreamState, ollama's ChatResponse)."""

import json

import pytest

from deeproots.server.anthropic_shapes import MessageShapes
from deeproots.server.chat_output import ChatAnswer, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, ToolCallStart

anthropic_streaming = pytest.importorskip("anthropic.lib.streaming._messages")

CALL_ID = "call_0123456789abcdef01234567"
THINK_TEXT_CALL = [ReasoningDelta("Weather "), ReasoningDelta("needs a tool."), TextDelta("Let me "),
                   TextDelta("look."), ToolCallStart(0, CALL_ID, "get_weather"), ToolCallDelta(0, '{"city": '),
                   ToolCallDelta(0, '"Paris"}')]
ANSWER = ChatAnswer("Let me look.", "Weather needs a tool.", [ToolCall(CALL_ID, "get_weather", '{"city": "Paris"}')],
                    "tool_calls")


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each SSE event in `text`."""
    events = []
    for block in text.split("\n\n"):
        if block:
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def anthropic_stream(events, answer, usage=(20, 9, 16)):
    shapes = MessageShapes("m")
    text = shapes.opening(usage[0], usage[2]) + "".join(shapes.chunks(e) for e in events) + \
        shapes.closing(answer, *usage)
    return sse_events(text)


def test_anthropic_stream_accumulates_to_the_whole_message():
    events = anthropic_stream(THINK_TEXT_CALL, ANSWER)
    snapshot = None
    for name, data in events:
        assert data["type"] == name
        snapshot = anthropic_streaming.accumulate_event(event=data, current_snapshot=snapshot, json_bufs={})
    assert [block.type for block in snapshot.content] == ["thinking", "text", "tool_use"]
    thinking, text, call = snapshot.content
    assert thinking.thinking == "Weather needs a tool." and text.text == "Let me look."
    assert (call.id, call.name, call.input) == (CALL_ID, "get_weather", {"city": "Paris"})
    assert snapshot.stop_reason == "tool_use"
    assert (snapshot.usage.input_tokens, snapshot.usage.cache_read_input_tokens, snapshot.usage.output_tokens) == \
        (4, 16, 9)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 3


def test_anthropic_stream_without_text_still_has_a_block():
    events = anthropic_stream([], ChatAnswer("", None, [], "length"), (5, 1, 0))
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert events[3][1]["delta"]["stop_reason"] == "max_tokens"


def test_anthropic_final_message_matches_the_stream():
    message = MessageShapes("m").final(ANSWER, 20, 9, 16)
    assert message["content"] == [{"type": "thinking", "thinking": "Weather needs a tool.", "signature": ""},
                                  {"type": "text", "text": "Let me look."},
                                  {"type": "tool_use", "id": CALL_ID, "name": "get_weather",
                                   "input": {"city": "Paris"}}]
    assert message["stop_reason"] == "tool_use" and message["usage"]["input_tokens"] == 4
    from anthropic.types import Message
    assert Message.model_validate(message).content[2].input == {"city": "Paris"}
