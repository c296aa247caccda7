"""The multi-model server, as real processes on the real models (SmolLM2 and Gemma 3 270M from the store): two models
served by one process, concurrent requests to both all answered (each as it is answered alone), aliases, a 404 with
did-you-mean, /v1/models/{id}; Ollama's /api/tags and /api/ps read with the official `ollama` client and checked
against the files (hashlib, the `gguf` package); a model reloaded after its idle timeout; the memory budget evicting
the least recently used model (and SIGTERM with two models loaded); `deeproots ps` as a subprocess."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import gguf
import ollama
import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # real server processes

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1"  # LiveServer serves the default as a path: under its file name
GEMMA = "gemma3-270m"
CTX, PARALLEL = 1024, 2
QUESTION = [{"role": "user", "content": "Name a river."}]


def answer(client: openai.OpenAI, model: str, max_tokens: int = 8) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=QUESTION, max_tokens=max_tokens, temperature=0)


def loaded(server: LiveServer) -> set[str]:
    return {model.model for model in ollama.Client(host=server.url, headers=server.headers).ps().models}


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def expected_memory(reader: gguf.GGUFReader) -> int:
    """Weights (the tensors' bytes) + f16 KV for the engine's budget (parallel x ctx) and the prefix cache (ctx),
    from the gguf package's reader (the session's: it parses Gemma's 262k-token vocabulary in ~9 s)."""
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def number(key: str) -> int:
        return int(reader.fields[f"{arch}.{key}"].parts[-1][0])

    head_dim = (number("attention.key_length") if f"{arch}.attention.key_length" in reader.fields
                else number("embedding_length") // number("attention.head_count"))
    kv_tokens = PARALLEL * CTX + CTX
    kv = 2 * number("block_count") * number("attention.head_count_kv") * head_dim * kv_tokens * 2
    return sum(int(tensor.n_bytes) for tensor in reader.tensors) + kv


@pytest.fixture(scope="module")
def server(smollm2_path, gemma3_path):
    server = LiveServer(smollm2_path, "--parallel", str(PARALLEL), "--keep-alive", "-1",
                        "--alias", "gpt-4o-mini=smollm2-135m")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)


def test_one_process_serves_two_models_each_by_its_name(server, client):
    assert loaded(server) == {SMOLLM2}  # the default, loaded at start; the rest on first use
    for model in (SMOLLM2, GEMMA):
        response = answer(client, model)
        assert response.model == model and response.choices[0].message.content
    assert loaded(server) == {SMOLLM2, GEMMA}
    assert server.metric("deeproots_model_loads_total", GEMMA) == 1


def test_concurrent_requests_to_both_models_are_all_answered_as_alone(server, client):
    alone = {model: answer(client, model, 16).choices[0].message.content for model in (SMOLLM2, GEMMA)}
    with ThreadPoolExecutor(8) as pool:
        futures = [(model, pool.submit(answer, client, model, 16)) for model in (SMOLLM2, GEMMA) * 4]
        for model, future in futures:
            assert future.result().choices[0].message.content == alone[model]


def test_an_alias_serves_its_model(server, client):
    aliased = answer(client, "gpt-4o-mini")
    assert aliased.model == SMOLLM2  # the store's name of the -m file, which the alias names, serves it
    assert aliased.choices[0].message.content == answer(client, SMOLLM2).choices[0].message.content


def test_an_unknown_model_is_a_404_with_did_you_mean(client):
    with pytest.raises(openai.NotFoundError) as refused:
        answer(client, "gemma3-207m")
    assert "did you mean 'gemma3-270m'?" in refused.value.message
    assert refused.value.body["code"] == "model_not_found"


def test_models_lists_the_default_first_then_the_stored_models_and_the_aliases(client):
    ids = [model.id for model in client.models.list().data]
    assert ids[0] == SMOLLM2 and {GEMMA, "smollm2-135m", "gpt-4o-mini"} <= set(ids)


def test_one_model_by_id(client):
    assert client.models.retrieve(GEMMA).id == GEMMA
    alias = client.models.retrieve("gpt-4o-mini")
    assert alias.id == "gpt-4o-mini" and alias.root == SMOLLM2 and alias.max_model_len == CTX
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_ollama_tags_list_the_stored_models_as_their_files_are(server, gemma3_path):
    models = {model.model: model for model in ollama.Client(host=server.url, headers=server.headers).list().models}
    gemma = models[GEMMA]
    assert gemma.size == os.path.getsize(gemma3_path)
    assert gemma.digest == hashlib.sha256(gemma3_path.read_bytes()).hexdigest()
    assert gemma.details.family == "gemma3" and gemma.details.quantization_level == "Q4_K_M"
    assert abs(gemma.modified_at.timestamp() - os.path.getmtime(gemma3_path)) < 1


def test_ollama_ps_lists_the_loaded_models_with_their_memory(server, client, smollm2_gguf):
    answer(client, SMOLLM2)
    running = {model.model: model for model in ollama.Client(host=server.url, headers=server.headers).ps().models}
    smollm2 = running[SMOLLM2]
    assert smollm2.size == expected_memory(smollm2_gguf) and smollm2.size_vram == 0
    assert smollm2.context_length == CTX
    assert smollm2.expires_at > datetime(9000, 1, 1, tzinfo=timezone.utc)  # --keep-alive -1: never


def deeproots(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deeproots.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DEEPROOTS_API_KEY": ""})


def test_deeproots_ps_prints_the_loaded_models(server):
    result = deeproots("ps", "--url", server.url, "--api-key", server.api_key)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "SIZE", "PROCESSOR"]
    assert {row.split()[0] for row in rows} == {SMOLLM2, GEMMA} and all("forever" in row for row in rows)


def test_deeproots_ps_without_the_key_or_a_server_says_so_in_one_line(server):
    for args, complaint in [(["--url", server.url], "wants an API key"),
                            (["--url", "http://127.0.0.1:9"], "no server answers at http://127.0.0.1:9")]:
        result = deeproots("ps", *args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and complaint in result.stderr, result.stderr


# --- idle timeout ----------------------------------------------------------------------------------------------

def test_a_model_idle_past_keep_alive_is_unloaded_and_the_next_request_reloads_it(smollm2_path):
    server = LiveServer(smollm2_path, "--keep-alive", "1s")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        wait_for(lambda: not loaded(server))  # the default too goes once idle for a second
        assert answer(client, SMOLLM2).choices[0].message.content
        assert server.metric("deeproots_model_loads_total", SMOLLM2) == 2
        wait_for(lambda: not loaded(server))
    finally:
        server.stop()


# --- memory budget ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_copy(smollm2_path, tmp_path_factory):
    """A third model: the default's file under another name."""
    path = tmp_path_factory.mktemp("models") / "smollm2-copy.gguf"
    shutil.copyfile(smollm2_path, path)
    return path


def test_past_the_memory_budget_the_least_recently_used_model_is_unloaded(smollm2_path, smollm2_gguf, gemma3_gguf,
                                                                           smollm2_copy):
    smollm2, gemma = expected_memory(smollm2_gguf), expected_memory(gemma3_gguf)
    budget = 2 * smollm2 + gemma - 1  # any two fit, never all three
    assert budget > smollm2 + gemma
    server = LiveServer(smollm2_path, "-m", str(smollm2_copy), "--parallel", str(PARALLEL), "--keep-alive", "-1",
                        "--max-memory", str(budget))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=300)
        answer(client, "smollm2-copy")
        answer(client, SMOLLM2)  # now the copy is the least recently used
        assert loaded(server) == {SMOLLM2, "smollm2-copy"}
        answer(client, GEMMA)
        assert loaded(server) == {SMOLLM2, GEMMA}
        answer(client, "smollm2-copy")  # SmolLM2 was used before Gemma
        assert loaded(server) == {GEMMA, "smollm2-copy"}
        server.process.send_signal(signal.SIGTERM)  # stops both engines and exits cleanly
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_a_model_larger_than_the_budget_alone_is_refused_naming_it_and_the_budget(smollm2_path, smollm2_gguf,
                                                                                 gemma3_gguf):
    budget = expected_memory(smollm2_gguf) + 1  # the default fits, Gemma never does
    assert expected_memory(gemma3_gguf) > budget
    server = LiveServer(smollm2_path, "--parallel", str(PARALLEL), "--max-memory", str(budget))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as refused:
            answer(client, GEMMA)
        assert "model 'gemma3-270m' needs about" in refused.value.message
        assert "--max-memory" in refused.value.message and refused.value.body["code"] == "model_too_large"
        assert loaded(server) == {SMOLLM2}  # nothing was unloaded for it
    finally:
        server.stop()


def test_a_default_model_larger_than_the_budget_stops_the_start_in_one_line(gemma3_path):
    result = deeproots("serve", "-m", str(gemma3_path), "--max-memory", "100M", "--port", "9")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "needs about" in result.stderr and "--max-memory 100.0 MB" in result.stderr
