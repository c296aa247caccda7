"""Connection-level defences and isolation of a real server process: slow headers and bodies, the connection cap,
bounded shutdown, API keys kept out of the process list, the Host check, and prefix-cache namespaces.

Raw sockets stand in for the clients that misbehave on purpose; every loop is bounded in count and time."""

import json
import select
import signal
import socket
import threading
import time

import httpx
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # real server processes

MODEL = "SmolLM2-135M-Instruct.Q4_1"
HEADER_TIMEOUT, BODY_IDLE_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1, 1, 4, 60
KEYS = ("key-one-a8f3", "key-two-77c1")
# 32+ tokens of a "system prompt" holding a secret, then a question: its first 32-token block gets cached
SECRET_PROMPT = ("System: you guard the vault. The vault PIN is 4711-2093-5562-8810 and you never reveal it to "
                 "anyone, whatever they claim or promise. User: what is the weather like today?")


@pytest.fixture(scope="module")
def open_server(smollm2_path):
    """No key, bound to loopback: the Host check is on."""
    server = LiveServer(smollm2_path, "--header-timeout", str(HEADER_TIMEOUT), "--body-idle-timeout",
                        str(BODY_IDLE_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT), "--max-connections",
                        str(MAX_CONNECTIONS), "--allowed-host", "API.internal", api_key=None)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(smollm2_path, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# one key per line\n{KEYS[0]}\n\n  {KEYS[1]}  \n")
    server = LiveServer(smollm2_path, "--api-key-file", str(key_file), api_key=None)
    yield server
    server.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_until_closed(sock: socket.socket, seconds: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection; fails if it keeps it open `seconds`."""
    data, deadline = b"", time.monotonic() + seconds
    for _ in range(int(seconds / 0.2) + 1000):  # 0.2 s per idle turn, and the response's own chunks
        if time.monotonic() > deadline:
            break
        readable, _, _ = select.select([sock], [], [], 0.2)
        if not readable:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"the server kept the connection open for {seconds} s")


def parse(raw: bytes) -> tuple[int, dict]:
    """(status, JSON body) of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def metrics_text(server, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + "/metrics", headers=headers, timeout=30).text


def metric(text: str, name: str) -> float:
    """Summed over its series (the engine's metrics have one per loaded model)."""
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


# --- slow clients ----------------------------------------------------------------------------------------------

def test_a_connection_that_never_finishes_its_headers_gets_408(open_server):
    with connect(open_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n")
        status, body = parse(read_until_closed(sock))
    assert status == 408 and body["error"]["code"] == "header_timeout"


def test_fifty_connections_dripping_header_lines_are_all_closed(open_server):
    socks = [connect(open_server) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n")
    still_open = set(socks)
    for _ in range(150):  # one header line per connection every 0.2 s, for at most 30 s
        still_open = {sock for sock in still_open if not answered_or_closed_after_one_more_line(sock)}
        if not still_open:
            break
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    assert not still_open, f"{len(still_open)} slow connections are still open"
    assert httpx.get(open_server.url + "/health", timeout=30).status_code == 200


def answered_or_closed_after_one_more_line(sock: socket.socket) -> bool:
    try:
        if select.select([sock], [], [], 0)[0]:
            return True  # the 408, or the end of the connection
        sock.sendall(b"X-Slow: 1\r\n")
        return False
    except OSError:  # reset, broken pipe: the server closed it
        return True


def test_connections_beyond_the_cap_get_503_and_are_closed(open_server):
    held = [connect(open_server) for _ in range(MAX_CONNECTIONS)]
    with connect(open_server) as extra:
        status, body = parse(read_until_closed(extra))
    for sock in held:
        sock.close()
    assert status == 503 and body["error"]["code"] == "too_many_connections"
    for _ in range(100):  # the held connections are gone: the server answers again
        if httpx.get(open_server.url + "/health", timeout=30).status_code == 200:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server did not answer again once the connections closed")


@pytest.mark.parametrize("length, status, code", [
    (10737418240, 413, "body_too_large"),  # refused at once, without waiting for 10 GiB
    (100, 408, "body_timeout"),  # a body that stops arriving
])
def test_a_body_that_cannot_arrive_is_refused(open_server, length, status, code):
    with connect(open_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{\"model\":" % length)
        answer, body = parse(read_until_closed(sock))
    assert answer == status and body["error"]["code"] == code


def test_a_body_dripping_one_byte_at_a_time_hits_the_total_timeout(open_server):
    """Each byte comes well within the idle timeout; the whole body never does."""
    with connect(open_server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        for _ in range(60):  # a byte every 0.3 s for at most 18 s, far past BODY_TIMEOUT
            if select.select([sock], [], [], 0.3)[0]:
                break
            sock.sendall(b" ")
        status, body = parse(read_until_closed(sock))
    assert status == 408 and body["error"]["code"] == "body_timeout"


# --- Host check (DNS rebinding) --------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "127.8.9.10", "[::1]:{port}",
                                  "api.internal:8000", "API.INTERNAL"])
def test_a_loopback_server_without_a_key_answers_loopback_and_allowed_names(open_server, host):
    response = httpx.get(open_server.url + "/v1/models", headers={"Host": host.format(port=open_server.port)})
    assert response.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil"])
def test_a_loopback_server_without_a_key_refuses_other_host_names(open_server, host):
    response = httpx.get(open_server.url + "/v1/models", headers={"Host": host.format(port=open_server.port)})
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "host_not_allowed"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_server_with_a_key_answers_any_host_name(keyed_server):
    response = httpx.get(keyed_server.url + "/v1/models",
                         headers={"Host": "evil.example", "Authorization": f"Bearer {KEYS[0]}"})
    assert response.status_code == 200


# --- API keys --------------------------------------------------------------------------------------------------

def test_every_key_of_the_key_file_works_and_none_is_in_the_process_list(keyed_server):
    for key in KEYS:
        assert httpx.get(keyed_server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for wrong in ("", "Bearer key-three", "Bearer # one key per line", f"Basic {KEYS[0]}"):
        assert httpx.get(keyed_server.url + "/v1/models", headers={"Authorization": wrong}).status_code == 401
    with open(f"/proc/{keyed_server.process.pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read()
    assert all(key.encode() not in arguments for key in KEYS)


def test_the_key_can_come_from_the_environment(smollm2_path, monkeypatch):
    monkeypatch.setenv("DEEPROOTS_API_KEY", "env-key-5d21")
    server = LiveServer(smollm2_path, api_key=None)
    try:
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer env-key-5d21"}).status_code == 200
        with open(f"/proc/{server.process.pid}/cmdline", "rb") as cmdline:
            assert b"env-key-5d21" not in cmdline.read()
    finally:
        server.stop()


# --- prefix-cache isolation ------------------------------------------------------------------------------------

def complete(server, key: str, prompt: str, **extra) -> dict:
    response = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          json={"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0, **extra})
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def test_a_guess_of_another_keys_cached_prompt_sees_no_hit(keyed_server):
    owner, guesser = KEYS
    assert complete(keyed_server, owner, SECRET_PROMPT)["prompt_tokens"] > 32
    # the owner's own repeat hits its cache (the control: hits are visible where they may be)
    assert complete(keyed_server, owner, SECRET_PROMPT)["prompt_tokens_details"]["cached_tokens"] == 32

    before = metrics_text(keyed_server, guesser)
    guess = complete(keyed_server, guesser, SECRET_PROMPT)
    after = metrics_text(keyed_server, guesser)
    assert guess["prompt_tokens_details"]["cached_tokens"] == 0
    # /metrics counts prompt tokens, hit or not, and has no cache-hit counter to compare
    assert metric(after, "deeproots_prompt_tokens_total") - metric(before, "deeproots_prompt_tokens_total") == \
        guess["prompt_tokens"]
    assert "cached" not in after


def test_cache_salt_splits_one_keys_cache(keyed_server):
    owner = KEYS[0]
    prompt = "Memo for the night shift. " + SECRET_PROMPT  # a first block no other test caches
    complete(keyed_server, owner, prompt, cache_salt="tenant-1")
    assert complete(keyed_server, owner, prompt, cache_salt="tenant-1")["prompt_tokens_details"]["cached_tokens"] == 32
    assert complete(keyed_server, owner, prompt, cache_salt="tenant-2")["prompt_tokens_details"]["cached_tokens"] == 0
    assert complete(keyed_server, owner, prompt)["prompt_tokens_details"]["cached_tokens"] == 0


# --- bounded shutdown ------------------------------------------------------------------------------------------

def test_sigterm_past_the_deadline_ends_streams_and_half_sent_bodies_then_exits(smollm2_path):
    server = LiveServer(smollm2_path, "--shutdown-deadline", "1", api_key=None)
    try:
        half_sent = connect(server)
        half_sent.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"model\":")
        events: list[str] = []
        first_event = threading.Event()

        # completions far longer than the deadline: end tokens are banned
        long = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0,
                "logit_bias": {"0": -100, "1": -100, "2": -100}}
        unstreamed: list[httpx.Response] = []

        def stream() -> None:
            with httpx.stream("POST", server.url + "/v1/completions", json={**long, "stream": True},
                              timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
                        first_event.set()

        clients = [threading.Thread(target=stream), threading.Thread(target=lambda: unstreamed.append(
            httpx.post(server.url + "/v1/completions", json=long, timeout=120)))]
        for client in clients:
            client.start()
        assert first_event.wait(60), "the stream did not start"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        for client in clients:
            client.join(30)
        status, body = parse(read_until_closed(half_sent))
        half_sent.close()
    finally:
        server.stop()
    assert not any(client.is_alive() for client in clients)
    assert status == 503 and body["error"]["code"] == "shutting_down"
    assert unstreamed[0].status_code == 503 and unstreamed[0].json()["error"]["code"] == "shutting_down"
    assert json.loads(events[-1])["error"]["code"] == "shutting_down"
    assert len(events) < 900 and "[DONE]" not in events
