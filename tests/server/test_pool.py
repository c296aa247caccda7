"""The model pool in-process, on the real default model: one load however many requests wait for a cold model, a
request's lease held until its response ends, per-request keep_alive; and the name table, the option parsers and the
rejected-request log lines."""

import argparse
import asyncio
import logging

import httpx
import pytest

from deeproots.engine import EngineConfig
from deeproots.errors import RequestError
from deeproots.server.commands import memory_option
from deeproots.server.middleware import BodyLimits, ServerGate
from deeproots.server.openai import create_app
from deeproots.server.pool import LoadOptions, ModelLeases, ModelPool, parse_keep_alive
from deeproots.server.servable import ModelSource, ServableModels, servable_models
from deeproots.server.state import ServerState
from deeproots.store import ModelStore

MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("30s", 30), ("1h", 3600), ("1.5m", 90), ("250ms", 0.25),
                                           ("0", 0), ("10", 10), ("-1", -1), ("-5m", -1), (42, 42), (-3, -1)])
def test_keep_alive_takes_ollamas_forms(text, seconds):
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "1d", "", "nan", float("inf"), True])
def test_a_keep_alive_that_is_no_duration_is_refused(text):
    with pytest.raises(RequestError):
        parse_keep_alive(text)


@pytest.mark.parametrize("text, size", [("8G", 8 * 10**9), ("512M", 512 * 10**6), ("1.5GB", 1.5e9),
                                        ("512MiB", 512 << 20), ("2gib", 2 << 30), ("1000", 1000)])
def test_memory_budgets_take_si_and_binary_units(text, size):
    assert memory_option(text) == size


@pytest.mark.parametrize("text", ["0", "-1G", "8X", "G", "lots", "infG"])
def test_a_memory_budget_that_is_no_size_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        memory_option(text)


# --- the name table ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def names(smollm2_path, gemma3_path):
    return servable_models([str(smollm2_path)], ["gpt-4o-mini=smollm2-135m"], ModelStore())


def test_a_path_is_the_default_under_its_file_name_and_the_store_serves_the_rest(names, smollm2_path, gemma3_path):
    assert names.default == MODEL and names.names[0] == MODEL
    assert names.resolve(None).path == smollm2_path
    assert names.resolve("gemma3-270m").path == gemma3_path
    # the store's name for the same file, the alias and Ollama's ":latest" all reach the one source
    assert names.resolve("smollm2-135m") is names.resolve("gpt-4o-mini") is names.resolve(MODEL + ":latest") \
        is names.resolve(MODEL)


def test_an_unknown_name_is_a_404_with_the_closest_names(names):
    with pytest.raises(Exception) as refused:
        names.resolve("gemma3-207m")
    assert refused.value.status == 404 and "did you mean 'gemma3-270m'?" in refused.value.message


@pytest.mark.parametrize("alias, complaint", [("x=gemma3-27m", "did you mean 'gemma3-270m'"),
                                              ("gemma3-270m=smollm2-135m", "already names a model"),
                                              ("nothing", "NAME=MODEL")])
def test_a_bad_alias_is_refused_at_start(smollm2_path, gemma3_path, alias, complaint):
    with pytest.raises(RequestError, match=complaint):
        servable_models([str(smollm2_path)], [alias], ModelStore())


# --- leases and loads on the real model -----------------------------------------------------------------------

def one_model_pool(path, **options) -> ModelPool:
    names = ServableModels({MODEL: ModelSource(MODEL, path, requested_context=256)}, MODEL)
    return ModelPool(names, LoadOptions(EngineConfig(max_running=2)), **options)


def leasing_app(pool: ModelPool, keep_alive: float | None, hold: asyncio.Event | None = None):
    """A request (ASGI, behind ModelLeases) that is served the model, then answers once `hold` is set."""
    async def app(scope, receive, send):
        await pool.served(MODEL, keep_alive)
        if hold is not None:
            await hold.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def request():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        await ModelLeases(app)({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)

    return request


@pytest.mark.slow  # loads the model
def test_requests_for_a_cold_model_wait_on_one_load_and_keep_alive_0_unloads_after_the_last(smollm2_path):
    pool = one_model_pool(smollm2_path, keep_alive=-1)

    async def scenario():
        hold = asyncio.Event()
        requests = [asyncio.ensure_future(leasing_app(pool, 0, hold)()) for _ in range(3)]
        while MODEL not in pool.residents or pool.residents[MODEL].in_flight < 3:
            await asyncio.sleep(0.01)
        assert pool.loads[MODEL] == 1  # three requests, one load
        await asyncio.sleep(0.1)
        pool.reap()
        assert MODEL in pool.residents  # keep_alive 0, but never while requests are in flight
        hold.set()
        await asyncio.gather(*requests)
        pool.reap()
        assert MODEL not in pool.residents  # the last one's end unloads it
        await asyncio.gather(*pool._unloading)

    asyncio.run(scenario())


@pytest.mark.slow  # loads the model
def test_a_requests_keep_alive_holds_for_its_model_and_a_later_default_restores_the_servers(smollm2_path):
    pool = one_model_pool(smollm2_path, keep_alive=0)

    async def scenario():
        await leasing_app(pool, -1)()  # forever
        await asyncio.sleep(0.05)
        pool.reap()
        assert pool.residents[MODEL].expires_in is None
        await leasing_app(pool, None)()  # the server's keep_alive (0) again
        pool.reap()
        assert MODEL not in pool.residents
        await asyncio.gather(*pool._unloading)

    asyncio.run(scenario())


# --- rejected requests are logged, one line each, with the reason -----------------------------------------------

def test_rejected_requests_are_logged_with_their_reason(smollm2_path, caplog):
    api = create_app(ServerState(one_model_pool(smollm2_path)))
    gate = ServerGate(ModelLeases(api), api_keys=["k"], body=BodyLimits(1000, 10, 60), allowed_hosts=None)

    async def calls():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(gate), base_url="http://test") as http:
            await http.get("/v1/models")
            key = {"Authorization": "Bearer k"}
            await http.get("/v1/models/gemma3-207m", headers=key)
            await http.post("/v1/chat/completions", headers=key, json={"model": MODEL, "messages": [], "n": 99})
            await http.post("/v1/chat/completions", headers=key, content=b"x" * 2000)

    with caplog.at_level(logging.INFO, logger="deeproots.server"):
        asyncio.run(calls())
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("rejected")]
    assert len(lines) == 4, lines
    assert lines[0].startswith("rejected GET /v1/models status=401: missing or wrong API key")
    assert lines[1].startswith("rejected GET /v1/models/gemma3-207m status=404: model 'gemma3-207m' does not exist")
    assert lines[2].startswith("rejected POST /v1/chat/completions status=400: ")
    assert lines[3].startswith("rejected POST /v1/chat/completions status=413: the request body exceeds 1000 bytes")
