"""Thinking apart from the answer, streamed in any pieces: the deltas always add up to the final answer, a tag cut
in two never leaks, and a tool call inside the thinking is not a call."""

import pytest

from deeproots.server.chat_output import ReasoningDelta, TextDelta
from deeproots.server.chat_parse import ChoiceParser, Thinking, held_tail
from deeproots.server.tool_formats.hermes import HermesFormat

R1_ANSWER = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"  # DeepSeek-R1's shape


def run(parser: ChoiceParser, text: str, size: int, finish: str = "stop"):
    events = [event for i in range(0, len(text), size) for event in parser.feed(text[i:i + size])]
    rest, answer = parser.finish(finish)
    return events + rest, answer


def joined(events, kind) -> str:
    return "".join(event.text for event in events if isinstance(event, kind))


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_thinking_and_answer_are_separated_in_any_pieces(size):
    events, answer = run(ChoiceParser(Thinking()), R1_ANSWER, size)
    assert answer.reasoning == "\nThe user greets me.\n" == joined(events, ReasoningDelta)
    assert answer.content == "Hello! How can I help?" == joined(events, TextDelta)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_a_prompt_that_opened_the_thinking_starts_the_answer_inside_it(size):
    events, answer = run(ChoiceParser(Thinking(opened=True)), "Let me see.</think>Yes.", size)
    assert (answer.reasoning, answer.content) == ("Let me see.", "Yes.")
    assert joined(events, ReasoningDelta) == "Let me see."


def test_a_model_that_does_not_think_answers_as_usual():
    _, answer = run(ChoiceParser(Thinking()), "  Plain answer.", 1)
    assert (answer.reasoning, answer.content) == ("", "  Plain answer.")


def test_thinking_cut_by_the_length_limit_is_all_reasoning():
    events, answer = run(ChoiceParser(Thinking()), "<think>still going </thi", 4, finish="length")
    assert (answer.reasoning, answer.content, answer.finish_reason) == ("still going </thi", "", "length")


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_a_tool_call_inside_the_thinking_is_not_a_call(size):
    text = ('<think>I could send <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call> but no.</think>\n'
            'No call needed.')
    events, answer = run(ChoiceParser(Thinking(), HermesFormat()), text, size)
    assert answer.tool_calls == [] and answer.finish_reason == "stop"
    assert "<tool_call>" in answer.reasoning and answer.content == "No call needed."


def test_a_tool_call_after_the_thinking_is_a_call():
    text = '<think>Weather needed.</think>\n\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    _, answer = run(ChoiceParser(Thinking(), HermesFormat()), text, 3)
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("f", '{"x": 1}')]
    assert answer.finish_reason == "tool_calls" and answer.content == ""


@pytest.mark.parametrize("text, markers, expected", [("abc<thi", ("<think>",), 4), ("abc", ("<think>",), 0),
                                                     ("x<", ("<a>", "[B]"), 1), ("<think>", ("<think>",), 0)])
def test_held_tail_is_the_longest_proper_prefix_of_a_marker(text, markers, expected):
    assert held_tail(text, markers) == expected
