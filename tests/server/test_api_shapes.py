"""The Anthropic, Responses and Ollama writers, fed the shared chat path's events: what the official clients'
own stream accumulators and response models make of them (anthropic's accumulate_event, openai's
ResponseStreamState, ollama's ChatResponse)."""

import json
import time
from types import SimpleNamespace

import ollama
from anthropic.lib.streaming import _messages as anthropic_streaming
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from openai import omit

from deeproots.server.anthropic_shapes import MessageShapes
from deeproots.server.chat import ChatUsage
from deeproots.server.chat_output import ChatAnswer, ReasoningDelta, TextDelta, ToolCall, ToolCallDelta, ToolCallStart
from deeproots.server.ollama_shapes import GenerateShapes, OllamaShapes
from deeproots.server.openai_responses_request import ResponsesRequest
from deeproots.server.openai_responses_shapes import ResponseShapes



ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)
USAGE = ChatUsage(prompt_tokens=20, completion_tokens=9, cached_tokens=16)
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


def anthropic_stream(events, answer, usage=USAGE):
    shapes = MessageShapes("m")
    shapes.started(SimpleNamespace(prompt_tokens=usage.prompt_tokens))  # what the shapes read of the exchange
    text = shapes.opening() + "".join(shapes.chunks(e) for e in events) + shapes.closing(answer, usage)
    return sse_events(text)


def test_anthropic_stream_accumulates_to_the_whole_message():
    events = anthropic_stream(THINK_TEXT_CALL, ANSWER)
    snapshot, json_buffers = None, {}
    for name, data in events:
        assert data["type"] == name
        ANTHROPIC_EVENT.validate_python(data)  # strictly: every field the client's types require
        snapshot = anthropic_streaming.accumulate_event(event=data, current_snapshot=snapshot,
                                                        json_bufs=json_buffers)
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
    events = anthropic_stream([], ChatAnswer("", None, [], "length"), ChatUsage(5, 1, 0))
    assert [name for name, _ in events] == ["message_start", "content_block_start", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert events[3][1]["delta"]["stop_reason"] == "max_tokens"


def test_anthropic_final_message_matches_the_stream():
    message = MessageShapes("m").final(ANSWER, USAGE)
    assert message["content"] == [{"type": "thinking", "thinking": "Weather needs a tool.", "signature": ""},
                                  {"type": "text", "text": "Let me look."},
                                  {"type": "tool_use", "id": CALL_ID, "name": "get_weather",
                                   "input": {"city": "Paris"}}]
    assert message["stop_reason"] == "tool_use" and message["usage"]["input_tokens"] == 4
    assert Message.model_validate(message).content[2].input == {"city": "Paris"}


# --- OpenAI Responses -------------------------------------------------------------------------------------

def responses_request(**body):
    return ResponsesRequest.model_validate({"model": "m", "input": "x", **body})


def responses_stream(events, answer, usage=USAGE, **body):
    shapes = ResponseShapes("m", responses_request(**body))
    text = shapes.opening() + "".join(shapes.chunks(e) for e in events) + shapes.closing(answer, usage)
    return sse_events(text)


def test_responses_stream_accumulates_to_the_whole_response():
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    state = ResponseStreamState(input_tools=[tool], text_format=omit)
    events = responses_stream(THINK_TEXT_CALL, ANSWER, tools=[tool])
    for number, (name, data) in enumerate(events):
        assert data["type"] == name and data["sequence_number"] == number
        RESPONSES_EVENT.validate_python(data)
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=data))
    response = state._completed_response
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    reasoning, message, call = response.output
    assert reasoning.content[0].text == "Weather needs a tool." and response.output_text == "Let me look."
    assert (call.call_id, call.name, json.loads(call.arguments)) == (CALL_ID, "get_weather", {"city": "Paris"})
    assert response.status == "completed" and response.usage.input_tokens_details.cached_tokens == 16


def test_responses_stream_cut_by_max_tokens_is_incomplete():
    events = responses_stream([TextDelta("Once")], ChatAnswer("Once", None, [], "length"), max_output_tokens=1)
    name, data = events[-1]
    assert name == "response.incomplete" and data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["content"][0]["text"] == "Once"
    assert data["response"]["output"][0]["status"] == "incomplete"
    final = ResponseShapes("m", responses_request()).final(ChatAnswer("Once", None, [], "length"), USAGE)
    assert final["output"][0]["status"] == "incomplete" and final["status"] == "incomplete"


def test_responses_final_matches_the_stream():
    final = ResponseShapes("m", responses_request()).final(ANSWER, USAGE)
    streamed = responses_stream(THINK_TEXT_CALL, ANSWER)[-1][1]["response"]
    without_ids = [{key: value for key, value in item.items() if key != "id"} for item in final["output"]]
    assert without_ids == [{key: value for key, value in item.items() if key != "id"} for item in streamed["output"]]
    assert Response.model_validate(final).output_text == "Let me look."


# --- Ollama -----------------------------------------------------------------------------------------------

def started(shapes):
    shapes.started(SimpleNamespace(started=time.perf_counter(), first_token=time.perf_counter()))
    return shapes


def ollama_lines(shapes, events, answer, usage=USAGE):
    started(shapes)
    text = "".join(shapes.chunks(e) for e in events) + shapes.closing(answer, usage)
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_ollama_chat_stream_reads_as_the_clients_chat_responses():
    parts = [ollama.ChatResponse(**line) for line in ollama_lines(OllamaShapes("m"), THINK_TEXT_CALL, ANSWER)]
    assert "".join(part.message.thinking or "" for part in parts) == "Weather needs a tool."
    assert "".join(part.message.content or "" for part in parts) == "Let me look."
    calls = [call for part in parts for call in part.message.tool_calls or []]
    assert [(call.function.name, call.function.arguments) for call in calls] == [("get_weather", {"city": "Paris"})]
    assert [part.done for part in parts].count(True) == 1 and parts[-1].done
    assert (parts[-1].done_reason, parts[-1].prompt_eval_count, parts[-1].eval_count) == ("stop", 20, 9)
    assert parts[-1].total_duration >= parts[-1].eval_duration >= 0


def test_ollama_final_chat_and_generate():
    chat = ollama.ChatResponse(**started(OllamaShapes("m")).final(ANSWER, USAGE))
    assert chat.message.content == "Let me look." and chat.message.thinking == "Weather needs a tool."
    assert chat.message.tool_calls[0].function.arguments == {"city": "Paris"} and chat.done
    generated = ollama.GenerateResponse(**started(GenerateShapes("m")).final(ChatAnswer("Hi", None, [], "length"),
                                                                              ChatUsage(5, 1, 0)))
    assert (generated.response, generated.done_reason, generated.eval_count) == ("Hi", "length", 1)


def test_ollama_generate_stream():
    lines = ollama_lines(GenerateShapes("m"), [TextDelta("Hel"), TextDelta("lo")],
                         ChatAnswer("Hello", None, [], "stop"))
    parts = [ollama.GenerateResponse(**line) for line in lines]
    assert "".join(part.response for part in parts) == "Hello" and parts[-1].done
