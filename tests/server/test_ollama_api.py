"""The official ollama client against a real server process and the default model: chat, generate (whole and
streamed), tools, format, think, embed, show, version, and errors in Ollama's shape."""

import json

import gguf
import httpx
import jsonschema
import numpy as np
import ollama
import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a real server process

MODEL = "SmolLM2-135M-Instruct.Q4_1"
GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def server(smollm2_path):
    server = LiveServer(smollm2_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers=server.headers, timeout=120)


def test_version(client):
    assert client._request_raw("GET", "/api/version").json()["version"].count(".") == 2


def test_show_describes_the_file(client, smollm2_path):
    reader = gguf.GGUFReader(smollm2_path)
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
    reference = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key).embeddings.create(
        model=MODEL, input=texts).data
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
