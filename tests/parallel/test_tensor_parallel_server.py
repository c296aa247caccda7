"""A real `deeproots serve --tp 2` (and `--pp 2`, two requests in flight: its stages overlap) whose follower rank is
SIGKILLed mid-request: every request ends in a 503 within the bound, the server stays up, /health reports the cluster
lost and the log names the rank."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow  # a server and its rank processes

BOUND_S = 30.0  # group.STEP_TIMEOUT_S: no collective waits longer (a killed rank's sockets close at once)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def decoding(url: str, requests: int) -> bool:
    """Every request admitted and a few tokens of each generated (the server's /metrics)."""
    lines = httpx.get(url + "/metrics", timeout=5).text.splitlines()
    value = lambda name: sum(float(line.split()[-1]) for line in lines if line.startswith(name))
    return (value("deeproots_running_sequences") == requests
            and value("deeproots_generation_tokens_total") >= 4 * requests)


@pytest.mark.parametrize("split, requests", [("--tp", 1), ("--pp", 2)])
def test_a_rank_killed_mid_request_gives_503_and_the_server_stays_up(smollm2_path, tmp_path, split, requests):
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "deeproots", "serve", "-m", str(smollm2_path), split, "2",
                                   "-t", "1", "--ctx", "512", "--port", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None and time.time() < deadline, log_path.read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        (follower,) = children(server.pid)
        answers = []
        body = {"model": "smollm2-135m", "max_tokens": 400, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a long story about a river."}]}
        threads = [threading.Thread(target=lambda: answers.append(
            httpx.post(url + "/v1/chat/completions", json=body, timeout=120))) for _ in range(requests)]
        for thread in threads:
            thread.start()
        while not decoding(url, requests):
            assert time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        os.kill(follower, signal.SIGKILL)
        killed = time.time()
        for thread in threads:
            thread.join(timeout=BOUND_S + 10 - (time.time() - killed))
        assert len(answers) == requests and all(a.status_code == 503 for a in answers), [a.text for a in answers]
        assert time.time() - killed < BOUND_S
        assert server.poll() is None  # rank 0 did not abort
        health = httpx.get(url + "/health", timeout=5)
        assert health.status_code == 503 and "rank 1" in health.text
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code == 503  # and it says so
        assert "rank 1 of 2 stopped answering" in log_path.read_text()
    finally:
        server.kill()
        server.wait()
