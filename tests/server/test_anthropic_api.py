"""The official anthropic client against a real server process and the default model: messages (whole and
streamed), a tool_use round trip, count_tokens, x-api-key auth, and errors in Anthropic's shape."""

import anthropic
import httpx
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_path):
    server = LiveServer(smollm2_path)
    yield server
    server.stop()


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
