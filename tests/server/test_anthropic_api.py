"""The official anthropic client against a real server process and the default model: messages (whole and
streamed), a tool_use round trip, count_tokens, x-api-key auth, and errors in Anthropic's shape."""

import json

import anthropic
import httpx
import jsonschema
import pytest
from live_server import serving

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}  # the newest client has no sampling arguments; the API still takes them


@pytest.fixture(scope="module")
def server(smollm2_path):
    yield from serving(smollm2_path)


@pytest.fixture(scope="module")
def client(server):
    # the client sends the key as x-api-key, as it does to Anthropic
    return anthropic.Anthropic(base_url=server.url, api_key=server.api_key, max_retries=0, timeout=120)


def test_count_tokens_is_the_rendered_prompts_length(client, server):
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=QUESTION)
    tokenized = httpx.post(server.url + "/tokenize", headers=server.headers, json={
        "model": MODEL, "messages": [{"role": "system", "content": "Be brief."}, *QUESTION]}).json()
    assert counted.input_tokens == tokenized["count"] > 10


def test_a_wrong_key_is_an_authentication_error(server):
    stranger = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        stranger.messages.count_tokens(model=MODEL, messages=QUESTION)
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("body, error, words", [
    ({"model": MODEL, "messages": QUESTION}, anthropic.BadRequestError, "max_tokens"),
    ({"model": MODEL, "max_tokens": 8, "messages": QUESTION, "temperature": 1.5}, anthropic.BadRequestError,
     "temperature"),
    ({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     anthropic.BadRequestError, "messages.0.content"),
    ({"model": "no-such-model", "max_tokens": 8, "messages": QUESTION}, anthropic.NotFoundError, "does not exist")])
def test_errors_in_anthropics_shape(client, body, error, words):
    with pytest.raises(error) as refused:
        client.post("/v1/messages", cast_to=httpx.Response, body=body)
    assert refused.value.body["type"] == "error" and set(refused.value.body["error"]) == {"type", "message"}
    assert words in refused.value.body["error"]["message"]


WEATHER_TOOL = {"name": "get_weather", "description": "Current weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_message(client):
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    message = client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, messages=story)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert [block.type for block in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 12
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 10


def test_the_prompt_is_the_conversation_as_hf_renders_it(client, smollm2_path):
    """The system prompt and every turn reach the template: HF's rendering of the same conversation, counted."""
    import transformers  # here: importing it costs seconds the fast subset must not pay
    hf = transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    turns = [*QUESTION, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"}]
    expected = hf.apply_chat_template([{"role": "system", "content": "Answer in one word."}, *turns],
                                      add_generation_prompt=True, tokenize=True, return_dict=False)
    counted = client.messages.count_tokens(model=MODEL, system="Answer in one word.", messages=turns)
    message = client.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, system="Answer in one word.",
                                     messages=turns)
    assert counted.input_tokens == len(expected)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == len(expected)


def test_stop_sequence_ends_the_message(client):
    whole = client.messages.create(model=MODEL, max_tokens=30, extra_body=GREEDY, messages=QUESTION).content[0].text
    cut = client.messages.create(model=MODEL, max_tokens=30, extra_body=GREEDY, messages=QUESTION,
                                 stop_sequences=[whole.split()[1]])
    assert cut.content[0].text == whole[:whole.index(whole.split()[1])]
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", whole.split()[1])
    ended = client.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, stop_sequences=["zebra"],
                                   messages=[{"role": "user", "content": "Say hi."}])
    assert (ended.stop_reason, ended.stop_sequence) == ("end_turn", None)


def test_stream_gives_the_same_message(client):
    whole = client.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=QUESTION)
    with client.messages.stream(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        streamed = stream.get_final_message()
    assert text == whole.content[0].text == streamed.content[0].text
    assert streamed.stop_reason == whole.stop_reason
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert streamed.usage.input_tokens + streamed.usage.cache_read_input_tokens == \
        whole.usage.input_tokens + whole.usage.cache_read_input_tokens


def test_tool_use_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER_TOOL], messages=ask,
                                    tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert called.stop_reason == "tool_use" and [block.type for block in called.content] == ["tool_use"]
    use = called.content[0]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    with client.messages.stream(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER_TOOL], messages=ask,
                                tool_choice={"type": "any", "disable_parallel_tool_use": True}) as stream:
        streamed = stream.get_final_message()  # the input assembled from input_json_delta events
    assert [(block.type, block.name, block.input) for block in streamed.content] == [("tool_use", use.name, use.input)]
    answered = client.messages.create(
        model=MODEL, max_tokens=30, extra_body=GREEDY, tools=[WEATHER_TOOL], tool_choice={"type": "none"},
        messages=[*ask, {"role": "assistant", "content": called.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "21 degrees and sunny"}]}])
    assert answered.content[0].type == "text" and answered.content[0].text
    assert answered.stop_reason in ("end_turn", "max_tokens")


def test_a_tool_result_without_its_call_is_refused(client):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=8, tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "21C"}]}])
    assert "toolu_x" in refused.value.body["error"]["message"]


def test_a_tool_choice_naming_no_tool_is_refused(client):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=8, tools=[WEATHER_TOOL], messages=QUESTION,
                               tool_choice={"type": "tool", "name": "get_time"})
    assert "get_time" in refused.value.body["error"]["message"]


def test_output_config_format_constrains_the_text_to_the_schema(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    message = client.messages.create(model=MODEL, max_tokens=40, extra_body=GREEDY, messages=QUESTION,
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    jsonschema.validate(json.loads(message.content[0].text), schema)
