"""gpt-oss's harmony chat template (tests/server/templates, README.md there names its source) rendered by our
sandboxed jinja against transformers' apply_chat_template on the same template: a developer prompt from the system
message, tools as a TypeScript namespace, a call, its result, the reasoning effort and the built-in tools."""

import pytest
import tokenizers
import transformers
from tool_templates import GPT_OSS, WEATHER, template_source

from deeproots.errors import RequestError
from deeproots.tokenizer import ChatTemplate

pytestmark = pytest.mark.slow  # transformers' templates

CALL = {"role": "assistant", "thinking": "I should look it up.", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
CONVERSATIONS = {
    "system_and_user": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}],
    "tool_result": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}, CALL,
                    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}],
    "answered": [{"role": "user", "content": "Weather in Paris? ünïcödé 😀"}, CALL,
                 {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                 {"role": "assistant", "thinking": "Done.", "content": "18 C in Paris."},
                 {"role": "user", "content": "And in Oslo?"}],
}
OPTIONS = {"plain": {}, "tools": {"tools": [WEATHER]},
           "effort_and_builtins": {"tools": [WEATHER], "reasoning_effort": "high",
                                   "builtin_tools": ["browser", "python"], "model_identity": "You are a test."}}


def hf_render(source: str, messages: list[dict], **kwargs) -> str:
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()),
                                              chat_template=source)
    return hf.apply_chat_template(messages, tokenize=False, **kwargs)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_harmony_template_renders_as_transformers(name, options, add_generation_prompt):
    source, messages = template_source(GPT_OSS), CONVERSATIONS[name]
    ours = ChatTemplate(source).render(messages, add_generation_prompt=add_generation_prompt, **OPTIONS[options])
    assert ours == hf_render(source, messages, add_generation_prompt=add_generation_prompt, **OPTIONS[options])
    assert ours.startswith("<|start|>system<|message|>") and ("<|call|>" in ours) == (name != "system_and_user")


def test_harmony_template_refuses_a_tool_result_with_no_call():
    messages = [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "18 C"}]
    with pytest.raises(RequestError, match="no previous assistant message with a tool call"):
        ChatTemplate(template_source(GPT_OSS)).render(messages)
