"""Tool calling of other families through tiny random checkpoints carrying their real published templates
(tests/server/templates): the prompt with tools, calls and results is the one transformers renders, and a required
or named call comes back as a valid call of the family's format even from random weights (the grammar sees to it).
Gemma 4's checkpoint has its markers as control tokens, as its own vocabulary has."""

import copy

import json
import shutil

import jsonschema
import openai
import pytest
from live_server import LiveServer
from tool_templates import FAMILIES, GEMMA4, GEMMA4_CONTROL_TOKENS, LLAMA32, MISTRAL, QWEN3, QWEN25, template_source

import deeproots
from deeproots.server.chat_plan import plan_chat
from deeproots.server.schemas import ChatCompletionRequest
from deeproots.server.tool_formats import tool_format_for

pytestmark = pytest.mark.slow  # transformers, and a server process per family

# Gemma 4 through the Gemma 3 architecture: the template and its call syntax are what is tested
ARCHITECTURE = {QWEN25: "qwen2", QWEN3: "qwen3", LLAMA32: "llama", MISTRAL: "mistral", GEMMA4: "gemma3_text"}
CITY = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}}, "required": ["city"],
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


@pytest.fixture(scope="module")
def gemma4_checkpoint(hf_smollm2_tokenizer, tmp_path_factory):
    """A tiny checkpoint whose vocabulary has Gemma 4's markers as control tokens, as Gemma 4's own has."""
    from tiny_checkpoints import CheckpointMaker

    tokenizer = copy.deepcopy(hf_smollm2_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": GEMMA4_CONTROL_TOKENS})
    return with_template(CheckpointMaker(tmp_path_factory, tokenizer)(ARCHITECTURE[GEMMA4])[0], GEMMA4,
                         tmp_path_factory)


@pytest.fixture(scope="module", params=[*FAMILIES, GEMMA4])
def family(request, tiny_checkpoint, tmp_path_factory):
    """(template name, folder of a tiny checkpoint of the family with its published template)."""
    if request.param == GEMMA4:
        return GEMMA4, request.getfixturevalue("gemma4_checkpoint")
    return request.param, with_template(tiny_checkpoint(ARCHITECTURE[request.param])[0], request.param,
                                        tmp_path_factory)


def with_template(source, name: str, tmp_path_factory):
    """A copy of the checkpoint folder `source` carrying the published template `name`."""
    folder = tmp_path_factory.mktemp(name)
    shutil.copytree(source, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").write_text(template_source(name))
    return folder


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
    # the conversation as the format hands it to the template (Gemma's results join the calling turn)
    hf_messages = tool_format_for(template_source(name)).prompt_messages(hf_messages, [])
    theirs = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        hf_messages, tools=TOOLS, add_generation_prompt=True, tokenize=False, **DATE)
    # The text is transformers'; its ids are our tokenizer's reading of it (the tiny checkpoints carry SmolLM2's
    # vocabulary, whose "\n\n" transformers' GGUF conversion merges and llama.cpp's smollm pre-tokenizer does not)
    assert model.tokenizer.decode(ours) == theirs
    assert ours == model.tokenizer.encode(theirs, add_bos=False, parse_special=True)


NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_a_required_call_from_random_weights_is_a_valid_call(family):
    name, folder = family
    server = LiveServer(folder)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        for stream, choice in ((False, "required"), (True, "required"), (False, NAMED)):
            body = dict(model=client.models.list().data[0].id, messages=CONVERSATION, tools=TOOLS, tool_choice=choice,
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


def test_gemmas_lazy_grammar_holds_a_started_call_to_the_syntax_with_its_control_tokens(gemma4_checkpoint):
    model = deeproots.load(gemma4_checkpoint)
    tokenizer = model.tokenizer
    assert all(tokenizer.find_control_tokens(marker) for marker in GEMMA4_CONTROL_TOKENS)
    served = Served(model)
    body = ChatCompletionRequest(model="m", messages=CONVERSATION, tools=TOOLS, chat_template_kwargs=DATE)

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_bos=False, parse_special=True)

    def admitted(answer: list[int]) -> bool:
        """Whether auto's constraint lets the model write these tokens, which then leave only the answer's end."""
        constraint = plan_chat(served, body).constraint()
        for token_id in answer:
            if not constraint.allowed()[token_id]:
                return False
            constraint.accept(token_id)
        return constraint.inner is not None and constraint.inner.matcher.is_accepting()

    assert admitted(ids('Checking.<|tool_call>call:get_weather{city:<|"|>Oslo, "north" {x}<|"|>}<tool_call|>'))
    assert not admitted(ids('<|tool_call>call:get_time{city:<|"|>Oslo<|"|>}<tool_call|>'))
    # the quote marker spelt in plain text is not the marker: the string cannot hold it, nor end with it
    plain_quote = tokenizer.encode('<|"|>', add_bos=False)
    assert len(plain_quote) > 1
    assert not admitted(ids('<|tool_call>call:get_weather{city:<|"|>Oslo') + plain_quote + ids("}<tool_call|>"))


def test_gemmas_auto_call_that_fails_the_schema_comes_back_as_content(gemma4_checkpoint):
    # logit_bias steers random weights (greedy): open a call, then empty strings, then close the object, so the
    # lazy grammar engages and the call it holds to the syntax, {"": ""}, lacks the required city
    tokenizer = deeproots.load(gemma4_checkpoint).tokenizer

    def token(text: str) -> str:
        (token_id,) = tokenizer.encode(text, add_bos=False, parse_special=True)
        return str(token_id)

    bias = {token("<|tool_call>"): 100, token('<|"|>'): 50, token("}"): 30}
    expected = '<|tool_call>call:get_weather{<|"|><|"|>:<|"|><|"|>}<tool_call|>'
    server = LiveServer(gemma4_checkpoint)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        body = dict(model=client.models.list().data[0].id, messages=CONVERSATION, tools=TOOLS, tool_choice="auto",
                    parallel_tool_calls=False, max_tokens=40, temperature=0, logit_bias=bias,
                    extra_body={"chat_template_kwargs": DATE})
        choice = client.chat.completions.create(**body).choices[0]
        assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (expected, None, "stop")
        with client.chat.completions.stream(**body) as events:
            streamed = events.get_final_completion().choices[0]
        assert (streamed.message.content, streamed.message.tool_calls, streamed.finish_reason) == \
            (expected, None, "stop")
    finally:
        server.stop()
