"""Gemma 4's tool calls: the parser on the text Gemma 4's published template writes for known calls (whole and in
streamed pieces), the arguments checked against the schema, the llguidance grammars on that text, and tool
results folded into the turn the template expects."""

import itertools
import json
import re
from functools import cache

import pytest
from hypothesis import given, settings, strategies as st

from deeproots.server.chat_output import TextDelta
from deeproots.server.chat_parse import ChoiceParser
from deeproots.server.tool_formats import FunctionSpec, tool_format_for
from deeproots.server.tool_formats.gemma import NO_QUOTE, QUOTE, GemmaFormat
from deeproots.tokenizer import ChatTemplate
from tool_templates import GEMMA4, template_source

EMPTY_THOUGHT = "<|channel>thought\n<channel|>"  # the generation prompt's closed thinking, not in a rendered turn
TURN_END = "<turn|>\n"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["C", "F"]}},
                  "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                            "parameters": WEATHER_SCHEMA}}
FUNCTIONS = [FunctionSpec("get_weather", None, WEATHER_SCHEMA)]
USER = {"role": "user", "content": "Weather in Paris and Oslo?"}
# What a call's arguments may hold: quotes, braces and commas inside strings, nesting, arrays, every scalar
RICH = {"city": 'Paris, "the" {capital}: [1]', "unit": "C", "days": 3, "scale": -1.5e-05, "hourly": True,
        "cached": False, "since": None, "where": {"lat": 48.85, "tags": ["old", {"k": [1, [2]]}], "none": {}},
        "empty": [], "text": "line one\nline two"}
CALLS = [("get_weather", RICH), ("get_weather", {"city": "Oslo"})]
# Random arguments the template can write unambiguously: keys it writes bare (no syntax characters), strings without
# the <|"|> marker (nothing escapes it), finite numbers (Jinja prints floats as Python does: 1e-05, 1e+16); assigned
# characters only (the default model's vocabulary cannot spell some unassigned ones)
UNASSIGNED = ("Cs", "Cn", "Co")  # surrogates, unassigned and private-use code points
KEYS = st.text(st.characters(blacklist_characters=':,{}[]<>"', blacklist_categories=(*UNASSIGNED, "Z", "Cc")),
               min_size=1, max_size=8)
STRINGS = st.text(st.characters(blacklist_categories=UNASSIGNED), max_size=12).filter(lambda text: QUOTE not in text)
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
           | STRINGS)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=8)
ARGUMENTS = st.dictionaries(KEYS, VALUES, max_size=4)


@cache
def template() -> ChatTemplate:
    return ChatTemplate(template_source(GEMMA4), bos_token="<bos>", eos_token="<eos>")


def assistant_text(calls: list[tuple[str, dict]]) -> str:
    """What the model writes after the generation prompt for these calls, as the template renders the turn."""
    before = template().render([USER], add_generation_prompt=True, tools=[WEATHER])
    turn = {"role": "assistant", "content": "", "tool_calls": [
        {"id": f"call{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)]}
    after = template().render([USER, turn], add_generation_prompt=False, tools=[WEATHER])
    prompt = before.removesuffix(EMPTY_THOUGHT)
    assert after.startswith(prompt) and after.endswith(TURN_END)
    return after[len(prompt):-len(TURN_END)]


def parse(text: str, size: int, functions=()):
    parser = ChoiceParser(None, tool_format_for(template_source(GEMMA4), functions))
    events = [event for i in range(0, len(text), size) for event in parser.feed(text[i:i + size])]
    rest, answer = parser.finish("stop")
    return events + rest, answer


def test_the_template_selects_the_gemma_format():
    assert tool_format_for(template_source(GEMMA4)).name == "gemma"


@pytest.mark.parametrize("size", [1, 2, 5, 13, 10_000])
def test_parser_reads_back_the_calls_the_template_writes(size):
    text = assistant_text(CALLS)
    assert text.startswith("<|tool_call>call:get_weather{") and '<|"|>' in text
    _, answer = parse(text, size)
    assert [(call.name, json.loads(call.arguments)) for call in answer.tool_calls] == CALLS
    assert answer.content == "" and answer.finish_reason == "tool_calls"


@settings(max_examples=60, deadline=None)
@given(ARGUMENTS, st.integers(1, 9))
def test_parser_reads_back_any_arguments_the_template_writes(arguments, size):
    _, answer = parse(assistant_text([("get_weather", arguments)]), size)
    assert [(call.name, json.loads(call.arguments)) for call in answer.tool_calls] == [("get_weather", arguments)]


@pytest.mark.parametrize("size", [1, 4, 10_000])
def test_prose_before_a_call_streams_as_content_and_partial_tags_are_held(size):
    text = "Let me look.\n" + assistant_text(CALLS[1:])
    events, answer = parse(text, size, FUNCTIONS)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer.content == "Let me look."
    assert [json.loads(call.arguments) for call in answer.tool_calls] == [{"city": "Oslo"}]


def test_a_required_calls_json_arguments_parse_in_the_same_wrapper():
    _, answer = parse('<|tool_call>call:get_weather{"city":"Oslo","unit":"F"}<tool_call|>', 3, FUNCTIONS)
    assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [("get_weather", {"city": "Oslo",
                                                                                               "unit": "F"})]


@pytest.mark.parametrize("text", [
    '<|tool_call>call:get_weather{unit:<|"|>K<|"|>,city:<|"|>Oslo<|"|>}<tool_call|>',  # not in the enum
    "<|tool_call>call:get_weather{unit:<|\"|>C<|\"|>}<tool_call|>",  # the required city is missing
    '<|tool_call>call:get_weather{city:3}<tool_call|>',  # not a string
    '<|tool_call>call:get_time{city:<|"|>Oslo<|"|>}<tool_call|>',  # not an offered function
    '<|tool_call>call:get_weather{city:<|"|>Oslo}<tool_call|>',  # an unclosed string
    '<|tool_call>call:get_weather{city:Oslo}<tool_call|>',  # a bare word is no value
    '<|tool_call>get_weather{city:<|"|>Oslo<|"|>}<tool_call|>',  # no "call:"
])
def test_a_call_that_does_not_parse_or_validate_comes_back_whole_as_content(text):
    events, answer = parse(text, 3, FUNCTIONS)
    assert answer.tool_calls == [] and answer.content == text and answer.finish_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text


def test_the_string_body_regex_is_exactly_the_text_without_the_quote_marker():
    # Checked against Python's own regex engine over every string of up to 7 characters of the marker's alphabet
    body = re.compile(NO_QUOTE)
    for length in range(8):
        for letters in itertools.product('<|">a', repeat=length):
            text = "".join(letters)
            assert bool(body.fullmatch(text)) == (QUOTE not in text), text


def test_tool_results_join_the_calling_turn_as_the_template_takes_them():
    conversation = [USER, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": json.dumps({"celsius": 18})},
        {"role": "tool", "tool_call_id": "b", "content": "4 C"}]
    messages = GemmaFormat(FUNCTIONS).prompt_messages(conversation, FUNCTIONS)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    prompt = template().render(messages, add_generation_prompt=True, tools=[WEATHER])
    # the turn stays open after the results: the model answers in it, with no new <|turn>model
    assert prompt.endswith('<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>'
                           "<|tool_response>response:get_weather{celsius:18}<tool_response|>"
                           '<|tool_response>response:get_weather{value:<|"|>4 C<|"|>}<tool_response|>' + EMPTY_THOUGHT)
    answered = GemmaFormat(FUNCTIONS).prompt_messages(
        [*conversation, {"role": "assistant", "content": "18 C and 4 C."}, {"role": "user", "content": "Thanks"}],
        FUNCTIONS)
    rendered = template().render(answered, add_generation_prompt=True, tools=[WEATHER])
    assert '4 C<|"|>}<tool_response|>18 C and 4 C.<turn|>\n<|turn>user\nThanks<turn|>\n' in rendered


@pytest.fixture(scope="module")
def admits(smollm2):
    """admits(required, text): whether the format's grammar (all calls, parallel) takes `text` whole, over the
    default model's vocabulary."""
    from deeproots.engine.grammar import ConstraintError, GrammarCompiler
    from deeproots.server.chat_plan import control_marker

    tokenizer = smollm2.tokenizer
    compiler = GrammarCompiler(tokenizer, smollm2.config.vocab_size)
    grammars = {required: compiler.lark("start: calls\n" + GemmaFormat(FUNCTIONS).grammar(
        FUNCTIONS, True, required, control_marker(tokenizer)), "tools") for required in (False, True)}

    def admits(required: bool, text: str) -> bool:
        constraint = grammars[required].constraint()
        try:
            for token_id in tokenizer.encode(text, add_bos=False, parse_special=True):
                if not constraint.allowed()[token_id]:
                    return False
                constraint.accept(token_id)
        except ConstraintError:
            return False
        return constraint.matcher.is_accepting()

    return admits


@pytest.mark.slow  # loads the default model's vocabulary for llguidance
def test_the_grammars_admit_the_template_text_and_refuse_what_is_not_a_call(admits):
    assert admits(False, assistant_text(CALLS))  # auto: Gemma's syntax, any offered name
    assert not admits(False, '<|tool_call>call:get_time{}<tool_call|>')
    assert not admits(False, '<|tool_call>call:get_weather{city:<|"|>a<|"|>b<|"|>}<tool_call|>')
    assert not admits(False, '<|tool_call>call:get_weather{city: <|"|>Oslo<|"|>}<tool_call|>')  # no padding
    assert admits(True, '<|tool_call>call:get_weather{"city":"Oslo"}<tool_call|>')  # required: schema-held JSON
    assert not admits(True, '<|tool_call>call:get_weather{"unit":"C"}<tool_call|>')
    assert not admits(True, assistant_text(CALLS[1:]))


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(ARGUMENTS.filter(lambda arguments: all(" " not in key for key in arguments)))
def test_the_auto_grammar_admits_any_call_the_template_writes(admits, arguments):
    assert admits(False, assistant_text([("get_weather", arguments)]))
