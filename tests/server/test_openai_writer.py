"""The OpenAI writer of the shared chat run: a thinking model's answer with a call, as chunks, reassembles in the
official openai client's own stream accumulator to the same message as the whole (non-streamed) body."""

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from deeproots.generate import GenerationStep
from deeproots.server.chat import ChatStep
from deeproots.server.chat_parse import ChoiceParser, Thinking
from deeproots.server.generation import Choice
from deeproots.server.responses import ChatShapes
from deeproots.server.tool_formats.hermes import HermesFormat

ANSWER = ['<think>', '\nThe user wants', ' the weather.\n</th', 'ink>\n\nChecking.\n<tool_call>\n{"name": "get_w',
          'eather", "arguments": {"city": "Paris"}}\n</tool_call>']


def steps_of(pieces: list[str]) -> tuple[list[ChatStep], Choice]:
    parser, choice, items = ChoiceParser(Thinking(), HermesFormat()), Choice(0), []
    for number, piece in enumerate(pieces):
        step = GenerationStep(number, piece, "stop" if number == len(pieces) - 1 else None)
        choice.steps.append(step)
        events, answer = parser.feed(piece), None
        if step.finish_reason:
            rest, answer = parser.finish(step.finish_reason)
            events += rest
        items.append(ChatStep(0, tuple(events), step, answer))
    choice.finish_reason = "tool_calls"
    return items, choice


@pytest.mark.parametrize("split", [1, 3, None])
def test_chunks_reassemble_in_the_official_accumulator_to_the_whole_body(split):
    pieces = ANSWER if split is None else ["".join(ANSWER)[i:i + split] for i in range(0, len("".join(ANSWER)), split)]
    items, choice = steps_of(pieces)
    shapes = ChatShapes("m", None, with_logprobs=False)  # no logprobs: no tokenizer needed
    state = ChatCompletionStreamState()
    state.handle_chunk(ChatCompletionChunk.model_validate(shapes.first_chunk(0)))
    for item in items:
        for chunk in shapes.chunks(item):
            state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(json.dumps(chunk))))
    streamed = state.get_final_completion().choices[0]

    class Usage:
        prompt_tokens, completion_tokens, cached_tokens = 10, len(items), 0

    whole = ChatCompletion.model_validate(shapes.final([items[-1].answer], [choice], Usage)).choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert streamed.message.content == whole.message.content == "Checking."
    assert [(c.id, c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.id, c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert json.loads(whole.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    extra = whole.message.model_extra  # the thinking: its own field, never in the content
    assert extra["reasoning_content"] == extra["reasoning"] == "\nThe user wants the weather.\n"
    assert streamed.message.model_extra["reasoning_content"] == extra["reasoning_content"]
