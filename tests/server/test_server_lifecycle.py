"""Server lifecycle and admission: 429 beyond the queue, CORS only when asked, SIGTERM drains and exits 0."""

import signal
import threading
import time

import httpx
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # real server processes

MODEL = "SmolLM2-135M-Instruct.Q4_1"
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 60}


@pytest.fixture
def small_server(smollm2_path):
    server = LiveServer(smollm2_path, "--parallel", "1", "--max-queue", "1", "--cors-origin", "http://ui.example",
                        "--shutdown-deadline", "20", api_key=None)
    yield server
    server.stop()


def post_in_background(server, body, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)))
    thread.start()
    return thread


def wait_for(condition, timeout: float = 60.0) -> None:
    """Polls until condition(); the timeout only keeps a broken server from hanging the suite."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_queue_overflow_is_429_then_sigterm_drains_and_exits_zero(small_server):
    results: list = []
    running = post_in_background(small_server, LONG, results)
    wait_for(lambda: small_server.metric("deeproots_running_sequences") == 1)
    queued = post_in_background(small_server, LONG, results)
    wait_for(lambda: small_server.metric("deeproots_queue_depth") == 1)
    refused = httpx.post(small_server.url + "/v1/chat/completions", json=LONG)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"

    small_server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(small_server.url + "/health").status_code == 503)
    assert httpx.post(small_server.url + "/v1/chat/completions", json=LONG).status_code == 503
    running.join(60)
    queued.join(60)
    assert [response.status_code for response in results] == [200, 200]
    assert all(response.json()["usage"]["completion_tokens"] > 0 for response in results)
    assert small_server.process.wait(30) == 0


def test_cors_headers_only_for_the_allowed_origin(small_server):
    allowed = httpx.options(small_server.url + "/v1/chat/completions", headers={
        "Origin": "http://ui.example", "Access-Control-Request-Method": "POST"})
    other = httpx.options(small_server.url + "/v1/chat/completions", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert allowed.headers.get("access-control-allow-origin") == "http://ui.example"
    assert "access-control-allow-origin" not in other.headers
