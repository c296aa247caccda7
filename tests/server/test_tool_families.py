"""Tool calling of other families through tiny random checkpoints carrying their real published templates
(tests/server/templates): the prompt with tools, calls and results is the one transformers renders, and a required
call comes back as a valid call of the family's format even from random weights (the grammar sees to it)."""

import json
import shutil

import jsonschema
import openai
import pytest
from live_server import LiveServer
from tool_templates import FAMILIES, LLAMA32, MISTRAL, QWEN3, QWEN25, template_source

import deeproots
from deeproots.server.chat_plan import plan_chat
from deeproots.server.schemas import ChatCompletionRequest

pytestmark = pytest.mark.slow  # transformers, and a server process per family

ARCHITECTURE = {QWEN25: "qwen2", QWEN3: "qwen3", LLAMA32: "llama", MISTRAL: "mistral"}
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": CITY}}]
# Llama 3.2's template prints today's date unless given one; Qwen 3's would let random weights think to the limit
DATE = {"date_string": "01 Dec 2026", "enable_thinking": False}
CONVERSATION = [  # call ids of 9 alphanumerics, as Mistral's template demands
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "abcdefgh1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "abcdefgh1", "content": "18 C"},
    {"role": "assistant", "content": "It is 18 C in Paris."},  # Mistral's template wants user/assistant turns
    {"role": "user", "content": "And in Oslo?"}]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tiny_checkpoint, tmp_path_factory):
    """(template name, folder of a tiny checkpoint of the family with its published template)."""
    source, _ = tiny_checkpoint(ARCHITECTURE[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").write_text(template_source(request.param))
    return request.param, folder


class Served:  # what plan_chat reads of a served model
    def __init__(self, model):
        from deeproots.engine.grammar import GrammarCompiler

        self.model = model
        self.grammars = GrammarCompiler(model.tokenizer, model.config.vocab_size)


def test_the_prompt_with_tools_calls_and_results_is_the_one_transformers_renders(family):
    import transformers

    name, folder = family
    model = deeproots.load(folder)
    body = ChatCompletionRequest(model="m", messages=CONVERSATION, tools=TOOLS, chat_template_kwargs=DATE)
    ours = plan_chat(Served(model), body).prompt_ids
    hf_messages = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.loads(
        c["function"]["arguments"])}} for c in m["tool_calls"]]} if "tool_calls" in m else m for m in CONVERSATION]
    theirs = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        hf_messages, tools=TOOLS, add_generation_prompt=True, tokenize=False, **DATE)
    # The text is transformers'; its ids are our tokenizer's reading of it (the tiny checkpoints carry SmolLM2's
    # vocabulary, whose "\n\n" transformers' GGUF conversion merges and llama.cpp's smollm pre-tokenizer does not)
    assert model.tokenizer.decode(ours) == theirs
    assert ours == model.tokenizer.encode(theirs, add_bos=False, parse_special=True)


def test_a_required_call_from_random_weights_is_a_valid_call(family):
    name, folder = family
    server = LiveServer(folder)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        for stream in (False, True):
            body = dict(model=client.models.list().data[0].id, messages=CONVERSATION, tools=TOOLS, tool_choice="required",
                        max_tokens=60, temperature=1.0, seed=1, extra_body={"chat_template_kwargs": DATE})
            if stream:
                with client.chat.completions.stream(**body) as events:
                    choice = events.get_final_completion().choices[0]
            else:
                choice = client.chat.completions.create(**body).choices[0]
            assert choice.finish_reason == "tool_calls", choice
            for call in choice.message.tool_calls:
                assert call.function.name == "get_weather"
                jsonschema.validate(json.loads(call.function.arguments), CITY)
    finally:
        server.stop()
