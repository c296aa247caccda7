"""Each tool-call format's parser on the text the model is trained to write: the published template's own
rendering of an assistant turn that made calls, fed whole and in streamed pieces."""

import json

import pytest

from deeproots.server.chat_output import TextDelta, ToolCallDelta, ToolCallStart
from deeproots.server.chat_parse import ChoiceParser, Thinking, ToolCallRouter
from deeproots.server.tool_formats import tool_format_for
from deeproots.server.tool_formats.generic import GenericFormat
from deeproots.tokenizer import ChatTemplate
from tool_templates import DEEPSEEK_R1, FAMILIES, LLAMA32, MISTRAL, WEATHER, template_source

USER = {"role": "user", "content": "Weather in Paris and Oslo?"}
PARIS = {"city": "Paris", "unit": "C"}
OSLO = {"city": "Oslo"}


def call(call_id: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def assistant_text(name: str, calls: list[dict]) -> str:
    """What the template writes for the assistant's turn: the rendering with it, less the rendering before it."""
    template = ChatTemplate(template_source(name), bos_token="<s>", eos_token="</s>")
    variables = {"tools": [WEATHER], "date_string": "01 Dec 2026"}
    before = template.render([USER], add_generation_prompt=name != MISTRAL, **variables)
    after = template.render([USER, {"role": "assistant", "content": "", "tool_calls": calls}],
                            add_generation_prompt=False, **variables)
    assert after.startswith(before)
    return after[len(before):].removesuffix(FAMILIES[name][1])


def pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def parse(tool_format, chunks: list[str], thinking: Thinking | None = None):
    parser = ChoiceParser(thinking, tool_format)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    rest, answer = parser.finish("stop")
    return events + rest, answer


@pytest.mark.parametrize("name", FAMILIES)
def test_template_selects_its_family_format(name):
    assert tool_format_for(template_source(name)).name == FAMILIES[name][0]


def test_a_template_that_renders_no_tools_gets_the_generic_form():
    # DeepSeek-R1's template writes earlier calls in DeepSeek V3's own tokens but never reads `tools`
    assert tool_format_for(template_source(DEEPSEEK_R1)).name == "generic-json"


@pytest.mark.parametrize("size", [1, 3, 7, 10_000])
@pytest.mark.parametrize("name", FAMILIES)
def test_parser_reads_the_calls_the_template_writes(name, size):
    # Llama 3.2's template renders one call per turn; Mistral's needs ids of 9 alphanumerics
    calls = [call("abcdefgh1", PARIS)] if name == LLAMA32 else [call("abcdefgh1", PARIS), call("abcdefgh2", OSLO)]
    text = assistant_text(name, calls)
    thinking = Thinking() if "</think>" in template_source(name) else None  # Qwen 3 writes an empty thinking
    events, answer = parse(tool_format_for(template_source(name)), pieces(text, size), thinking)
    assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == \
        [("get_weather", c["function"]["arguments"]) for c in calls]
    assert answer.content == "" and answer.finish_reason == "tool_calls"
    starts = [event for event in events if isinstance(event, ToolCallStart)]
    assert [event.index for event in starts] == list(range(len(calls)))
    assert all(event.id.startswith("call_") and len(event.id) == 29 for event in starts)
    for index, spec in enumerate(answer.tool_calls):  # the fragments of each call concatenate to its arguments
        assert "".join(e.arguments for e in events if isinstance(e, ToolCallDelta) and e.index == index) \
            == spec.arguments


@pytest.mark.parametrize("size", [1, 4, 10_000])
def test_prose_around_hermes_calls_is_content_and_held_tags_never_leak(size):
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    events, answer = parse(tool_format_for(template_source("Qwen-Qwen3-0.6B")), pieces(text, size))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.content == "Let me check."
    assert [c.name for c in answer.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("name", FAMILIES)
def test_text_that_is_not_a_call_comes_back_whole_as_content(name):
    text = "Sorry, <tool_call> and [TOOL_CALLS] and {\"name\" are words here"
    events, answer = parse(tool_format_for(template_source(name)), pieces(text, 2))
    assert answer.content.startswith("Sorry,") and answer.tool_calls == [] and answer.finish_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.content
    assert answer.content.replace(" ", "") in text.replace(" ", "")


def test_a_broken_call_region_is_returned_as_content():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>'
    events, answer = parse(tool_format_for(template_source("Qwen-Qwen2.5-7B-Instruct")), pieces(text, 5))
    assert answer.content == text and not answer.tool_calls and answer.finish_reason == "stop"


@pytest.mark.parametrize("size", [1, 9, 10_000])
def test_generic_format_reads_calls_or_a_response(size):
    calls = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    _, answer = parse(GenericFormat(), pieces(calls, size))
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    _, answer = parse(GenericFormat(), pieces('{"response": "It is sunny."}', size))
    assert answer.content == "It is sunny." and answer.tool_calls == [] and answer.finish_reason == "stop"


def test_a_call_cut_by_the_length_limit_stays_content_with_length():
    router = ToolCallRouter(GenericFormat())
    router.feed('{"tool_calls": [{"name": "get_weather", "argu')
    assert [e.text for e in router.finish()] == ['{"tool_calls": [{"name": "get_weather", "argu']
