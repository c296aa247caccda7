"""Load on a real server: 16 concurrent streams all complete; clients that leave mid-stream free their slots."""

import asyncio
import time

import httpx
import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a real server under load

MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def server(smollm2_path):
    server = LiveServer(smollm2_path, "--parallel", "8", "--max-queue", "32")
    yield server
    server.stop()


async def stream_chat(client: openai.AsyncOpenAI, index: int, max_tokens: int, leave_after: int | None = None):
    """(text, finish reason, usage) of one streamed answer; leave_after N chunks closes the connection early."""
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Tell me fact number {index} about the sea."}],
        max_tokens=max_tokens, temperature=0.8, seed=index, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, chunks = [], None, None, 0
    async for chunk in stream:
        chunks += 1
        if leave_after is not None and chunks >= leave_after:
            await stream.close()
            return None
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage


def test_sixteen_concurrent_streams_all_complete(server):
    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0,
                                      timeout=120) as client:
            return await asyncio.wait_for(asyncio.gather(*(stream_chat(client, i, 24) for i in range(16))), 150)

    results = asyncio.run(run())
    assert len(results) == 16
    for text, finish, usage in results:
        assert finish in ("stop", "length") and usage is not None and usage.completion_tokens > 0
        assert finish == "stop" or usage.completion_tokens == 24
        assert text


def test_clients_that_disconnect_mid_stream_free_their_slots(server):
    async def run():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0,
                                      timeout=120) as client:
            jobs = [stream_chat(client, i, 200 if i % 2 else 16, leave_after=4 if i % 2 else None) for i in range(16)]
            return await asyncio.wait_for(asyncio.gather(*jobs), 150)

    before = server.metric("deeproots_generation_tokens_total")
    results = asyncio.run(run())
    assert all(result is None for result in results[1::2])
    assert all(result[1] in ("stop", "length") for result in results[0::2])
    deadline = time.time() + 60  # a hang guard, not a speed limit: the loop ends once the slots are free
    while server.metric("deeproots_running_sequences") and time.time() < deadline:
        time.sleep(0.05)
    assert server.metric("deeproots_running_sequences") == 0
    assert server.metric("deeproots_kv_usage_ratio") == 0
    # the 8 that left asked for 200 tokens each; had they run on, far more would have been generated
    assert server.metric("deeproots_generation_tokens_total") - before < 8 * 16 + 8 * 100


def test_non_streaming_client_that_disconnects_is_cancelled(server, smollm2):
    # The end tokens are banned so the answer runs to max_tokens: a story that ended early (about one in eight
    # end within 130 tokens) could be answered within the client's 1 s timeout; 2,000 tokens take seconds even on a
    # CPU several times faster than this one (the test's result must not depend on the machine's speed).
    no_end = {str(token): -100 for token in smollm2.tokenizer.stop_ids}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 2000,
            "logit_bias": no_end}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=server.headers, timeout=1.0)
    deadline = time.time() + 60  # a hang guard, not a speed limit: the loop ends once the slots are free
    while server.metric("deeproots_running_sequences") and time.time() < deadline:
        time.sleep(0.05)
    assert server.metric("deeproots_running_sequences") == 0
