"""A stream the shutdown deadline cuts ends with the error its own API's client reads: Anthropic's `error` event,
Ollama's {"error"} line (the OpenAI routes' own case is in test_server_hardening.py)."""

import json
import signal
import threading

import httpx
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a real server process, stopped by SIGTERM

MODEL = "SmolLM2-135M-Instruct.Q4_1"
STORY = [{"role": "user", "content": "Tell me a very long story."}]  # greedy, SmolLM2 tells it for seconds


def anthropic_error(lines: list[str]) -> str:
    assert lines[-2] == "event: error"
    error = json.loads(lines[-1].removeprefix("data: "))
    assert error["type"] == "error"
    return error["error"]["type"]


def ollama_error(lines: list[str]) -> str:
    return json.loads(lines[-1])["error"]


@pytest.mark.parametrize("path, body, last_error, expected", [
    ("/v1/messages", {"model": MODEL, "max_tokens": 900, "stream": True, "messages": STORY, "temperature": 0},
     anthropic_error, "overloaded_error"),
    ("/api/chat", {"model": MODEL, "messages": STORY, "options": {"temperature": 0, "num_predict": 900}},
     ollama_error, "the server is shutting down")])
def test_a_stream_cut_at_shutdown_ends_with_its_apis_error(smollm2_path, path, body, last_error, expected):
    server = LiveServer(smollm2_path, "--shutdown-deadline", "1", api_key=None)
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", server.url + path, json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    try:
        client = threading.Thread(target=stream)
        client.start()
        assert started.wait(60), "the stream did not start"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        client.join(30)
    finally:
        server.stop()
    assert not client.is_alive()
    assert last_error(lines).startswith(expected)
