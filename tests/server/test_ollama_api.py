"""The official ollama client against a real server process and the default model: chat, generate (whole and
streamed), tools, format, think, embed, show, version, and errors in Ollama's shape."""

import json

import httpx
import jsonschema
import numpy as np
import ollama
import pytest
from live_server import openai_client, serving

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
GREEDY = {"temperature": 0, "num_predict": 16}
OLLAMA_DEFAULTS = {"top_k": 40, "repetition_penalty": 1.1}  # Ollama's defaults, as the OpenAI route's extensions


@pytest.fixture(scope="module")
def server(smollm2_path):
    yield from serving(smollm2_path)


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers=server.headers, timeout=120)


def test_version(client):
    assert client._request_raw("GET", "/api/version").json()["version"].count(".") == 2


def test_show_describes_the_file(client, smollm2_gguf):
    reader = smollm2_gguf
    architecture = reader.fields["general.architecture"].contents()
    shown = client.show(MODEL)
    assert shown.details.family == architecture and shown.details.format == "gguf"
    assert shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["general.parameter_count"] == sum(int(t.n_elements) for t in reader.tensors)
    assert shown.modelinfo[f"{architecture}.block_count"] == reader.fields[f"{architecture}.block_count"].contents()
    assert shown.template == reader.fields["tokenizer.chat_template"].contents()
    assert "completion" in shown.capabilities


def test_embed_gives_the_engines_vectors(client, server):
    texts = ["a cat", "a kitten", "tax law reform"]
    embedded = client.embed(model=MODEL, input=texts)
    reference = openai_client(server).embeddings.create(model=MODEL, input=texts).data
    np.testing.assert_allclose(embedded.embeddings, [item.embedding for item in reference], atol=1e-6)
    assert embedded.prompt_eval_count > 3 and embedded.total_duration > 0
    legacy = client.embeddings(model=MODEL, prompt="a cat")
    np.testing.assert_allclose(legacy.embedding, reference[0].embedding, atol=1e-6)


def test_embed_truncates_a_text_longer_than_the_context_unless_told_not_to(client):
    long = "word " * 3000  # past the test server's 1024-token context
    assert len(client.embed(model=MODEL, input=long).embeddings[0]) == 576
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=MODEL, input=long, truncate=False)
    assert refused.value.status_code == 400 and "tokens" in refused.value.error


@pytest.mark.parametrize("path, body, status, words", [
    ("/api/chat", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    ("/api/show", {"model": "no-such-model"}, 404, "does not exist"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"temperature": 5}}, 400, "options.temperature"),
    ("/api/embed", {"model": MODEL, "input": "x", "keep_alive": "soon"}, 400, "keep_alive"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "tool", "content": "21C"}]}, 400, "tool message")])
def test_errors_in_ollamas_shape(server, path, body, status, words):
    response = httpx.post(server.url + path, json=body, headers=server.headers, timeout=60)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_a_body_without_content_type_is_read_as_json(server):
    response = httpx.post(server.url + "/api/show", content=json.dumps({"model": MODEL}), headers=server.headers)
    assert response.status_code == 200 and response.json()["details"]["family"] == "llama"


def test_missing_key_is_a_401_in_ollamas_shape(server):
    response = httpx.post(server.url + "/api/show", json={"model": MODEL})
    assert response.status_code == 401 and "API key" in response.json()["error"]


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def chat_client(server):
    return openai_client(server)


def test_chat_is_answered_as_the_chat_route_answers_it(client, chat_client):
    response = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    reference = chat_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0,
                                                      top_p=0.9, extra_body=OLLAMA_DEFAULTS)
    assert response.message.role == "assistant" and response.message.content == reference.choices[0].message.content
    assert response.done and response.done_reason == reference.choices[0].finish_reason
    assert (response.prompt_eval_count, response.eval_count) == (reference.usage.prompt_tokens,
                                                                 reference.usage.completion_tokens)
    assert response.total_duration >= response.eval_duration > 0


def test_chat_stream_gives_the_same_answer(client):
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert "".join(part.message.content for part in parts) == whole.message.content
    assert [part.done for part in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count == whole.eval_count and parts[-1].done_reason == whole.done_reason


def test_generate_whole_and_streamed(client, chat_client):
    whole = client.generate(model=MODEL, prompt="Say hi.", system="You are terse.", options=GREEDY)
    reference = chat_client.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0, top_p=0.9, extra_body=OLLAMA_DEFAULTS,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}])
    assert whole.response == reference.choices[0].message.content and whole.done
    parts = list(client.generate(model=MODEL, prompt="Say hi.", system="You are terse.", options=GREEDY,
                                 stream=True))
    assert "".join(part.response for part in parts) == whole.response and parts[-1].done


def test_options_reach_the_sampler(client):
    seeded = dict(model=MODEL, messages=[{"role": "user", "content": "Invent a pet name."}],
                  options={"temperature": 1.5, "seed": 11, "num_predict": 12})
    first, again = client.chat(**seeded), client.chat(**seeded)
    assert first.message.content == again.message.content and first.eval_count == 12
    stopped = client.chat(model=MODEL, messages=QUESTION, options={**GREEDY, "num_predict": 30, "stop": [" "]})
    assert " " not in stopped.message.content and stopped.done_reason == "stop"


def test_format_json_and_schema(client):
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    shaped = client.chat(model=MODEL, messages=QUESTION, format=schema, options={"temperature": 0, "num_predict": 40})
    jsonschema.validate(json.loads(shaped.message.content), schema)
    anything = client.generate(model=MODEL, prompt="List three colors.", format="json",
                               options={"temperature": 0, "num_predict": 40})
    assert isinstance(json.loads(anything.response), dict)


def test_tool_call_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.chat(model=MODEL, messages=ask, tools=[WEATHER_TOOL], options={"temperature": 0,
                                                                                  "num_predict": 80})
    calls = called.message.tool_calls
    assert calls and calls[0].function.name == "get_weather" and isinstance(calls[0].function.arguments["city"], str)
    streamed = [call for part in client.chat(model=MODEL, messages=ask, tools=[WEATHER_TOOL], stream=True,
                                             options={"temperature": 0, "num_predict": 80})
                for call in part.message.tool_calls or []]
    assert [call.function for call in streamed] == [call.function for call in calls]
    answered = client.chat(model=MODEL, options=GREEDY, messages=[
        *ask, called.message, {"role": "tool", "content": "21 degrees and sunny", "tool_name": "get_weather"}])
    asked = client.chat(model=MODEL, messages=ask, options={"num_predict": 1})
    assert answered.done and answered.prompt_eval_count > asked.prompt_eval_count + 10  # the call and its result


def test_think_and_keep_alive_are_accepted(client):
    response = client.chat(model=MODEL, messages=QUESTION, think=False, keep_alive="5m", options=GREEDY)
    assert response.message.content and not response.message.thinking


def test_an_empty_request_loads_the_model(client):
    assert client.generate(model=MODEL).done_reason == "load"
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
