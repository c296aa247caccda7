"""A real `deeproots serve` process on 127.0.0.1 (a free port) with the default model (and whatever else the store
holds, loaded on demand), for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, model_path: Path, *extra: str, api_key: str | None = API_KEY):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        command = [sys.executable, "-m", "deeproots.server", "serve", "-m", str(model_path), "--port", str(self.port),
                   "--ctx", "1024", *extra] + (["--api-key", api_key] if api_key else [])
        self.log = open(os.devnull, "w") if not os.environ.get("DEEPROOTS_TEST_SERVER_LOG") else None
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def metric(self, name: str, model: str | None = None) -> float:
        """A metric's value: summed over its series (per-model engine metrics carry a `model` label), or of one
        model's series; 0 when it has none (no model loaded)."""
        text = httpx.get(self.url + "/metrics", headers=self.headers).text
        series = [line for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
        if model is not None:
            series = [line for line in series if f'model="{model}"' in line]
        return sum(float(line.split()[-1]) for line in series)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.log:
            self.log.close()


def serving(model_path: Path, *extra: str) -> Iterator[LiveServer]:
    """A fixture's server: `yield from serving(path)` starts it and stops it when the fixture's scope ends."""
    server = LiveServer(model_path, *extra)
    try:
        yield server
    finally:
        server.stop()


def openai_client(server: LiveServer):
    """The official openai client on the server's /v1 (no retries: a test sees each answer as it came)."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
