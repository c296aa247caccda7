"""Plain ASGI middleware (no BaseHTTPMiddleware, so client disconnects still reach the routes): Host check, API keys
(Bearer, or Anthropic's x-api-key), body size and read timeouts, refusing new work while the server drains, and
ending what is left at the shutdown deadline. Refusals come in the shape of the API the path belongs to."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from ..errors import RequestError
from .errors import RETRY_AFTER_SECONDS, error_body, log_rejected

ASGIApp = Callable[..., Awaitable[None]]
OPEN_PATHS = frozenset({"/health"})  # reachable without the API key (load balancers probe it)
CLOSE = [(b"connection", b"close")]  # for answers that leave the request body unread
SHUTTING_DOWN = "the server is shutting down"
STREAM_TYPES = {"sse": b"text/event-stream", "ndjson": b"application/x-ndjson"}  # how a stream's responses are framed


async def send_error(send, status: int, message: str, *, code: str | None = None, type: str = "invalid_request_error",
                     headers: list[tuple[bytes, bytes]] = (), path: str = "") -> None:
    body = json.dumps(error_body(status, message, type=type, code=code, path=path)).encode()
    retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())] if status in (429, 503) else []
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *retry, *headers]})
    await send({"type": "http.response.body", "body": body})


def is_loopback_address(host: str) -> bool:
    """True for a bind address or host name that only this machine reaches (localhost, 127.x, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '[::1]'."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[:text.find("]") + 1]
    return text.partition(":")[0]


def key_namespace(key: bytes | None) -> bytes:
    """The prefix-cache namespace of requests made with `key`: a hash of it (b"" for a server without keys)."""
    return hashlib.sha256(b"deeproots api key\0" + key).digest() if key else b""


def cache_namespace(scope, salt: str | None) -> bytes:
    """The prefix-cache namespace of one request: its API key's, split further by the request's `cache_salt`."""
    namespace = scope.get("state", {}).get("cache_namespace", b"")
    if salt is None:
        return namespace
    return hashlib.sha256(namespace + b"\0cache_salt\0" + salt.encode()).digest()


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    idle_timeout: float  # seconds without a byte of the body
    total_timeout: float  # seconds for the whole body

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or not self.idle_timeout > 0 or not self.total_timeout > 0:
            raise RequestError(f"body limits must be positive, got {self}")


class Exchange:
    """One request in flight: the task serving it (to end it at the shutdown deadline) and how far its
    response got (what the client still needs to see the end)."""

    def __init__(self, send, path: str):
        self.task = asyncio.current_task()
        self._send, self.path = send, path
        self.started = self.complete = False
        self.stream_framing: str | None = None  # "sse" or "ndjson" while the response is a stream
        self.ending = False  # set by end(): the next CancelledError is ours, not uvicorn's

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            self.stream_framing = next((framing for framing, kind in STREAM_TYPES.items()
                                        if content_type.startswith(kind)), None)
        elif message["type"] == "http.response.body":
            self.complete = not message.get("more_body", False)
        await self._send(message)

    def end(self) -> None:
        self.ending = True
        self.task.cancel()

    async def finish_for_shutdown(self) -> None:
        """After end(): a 503 if nothing was sent yet; a final error event if a stream was cut."""
        self.ending = False  # a second cancellation (uvicorn's own give-up) is not caught again
        if not self.started:
            await send_error(self.send, 503, SHUTTING_DOWN, code="shutting_down", type="server_error",
                             headers=CLOSE, path=self.path)
        elif self.stream_framing and not self.complete:
            event = json.dumps(error_body(503, SHUTTING_DOWN + ": the stream ended before its last token",
                                          type="server_error", code="shutting_down", path=self.path))
            # SSE clients (openai's, anthropic's) raise on an `error` event; an NDJSON one reads the line's "error"
            line = f"event: error\ndata: {event}\n\n" if self.stream_framing == "sse" else event + "\n"
            await self.send({"type": "http.response.body", "body": line.encode()})


class ServerGate:
    """Checks every HTTP request before the routes see it; tracks the requests in flight, so that shutdown can
    wait for them and then end them."""

    def __init__(self, app: ASGIApp, *, api_keys: Iterable[str], body: BodyLimits,
                 allowed_hosts: frozenset[str] | None):
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.body = body
        self.allowed_hosts = allowed_hosts  # Host names answered besides loopback ones; None: any Host header
        self.draining = False
        self.exchanges: set[Exchange] = set()

    @property
    def in_flight(self) -> int:
        return len(self.exchanges)

    def end_all(self) -> None:
        """The shutdown deadline: end every request still in flight (each tells its client why)."""
        for exchange in list(self.exchanges):
            exchange.end()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        exchange = Exchange(send, scope["path"])
        self.exchanges.add(exchange)
        try:
            await self._serve(scope, receive, exchange.send)
        except asyncio.CancelledError:
            if not exchange.ending:
                raise
            asyncio.current_task().uncancel()
            await exchange.finish_for_shutdown()
        finally:
            self.exchanges.discard(exchange)

    async def _serve(self, scope, receive, send) -> None:
        headers = dict(scope["headers"])

        async def refuse(status: int, message: str, **fields) -> None:  # errors in the shape of the path's API
            log_rejected(scope["method"], scope["path"], status, message)
            await send_error(send, status, message, headers=CLOSE, path=scope["path"], **fields)

        if self.draining:
            return await refuse(503, SHUTTING_DOWN, code="shutting_down", type="server_error")
        if self.allowed_hosts is not None and not self._host_allowed(host_name(headers.get(b"host", b""))):
            return await refuse(421, "this server does not answer to that Host name: connect to it by a loopback "
                                "address or start it with --allowed-host NAME", code="host_not_allowed")
        key = self._key(headers)
        if scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS" and self.api_keys and key is None:
            return await refuse(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                                code="invalid_api_key", type="authentication_error")
        body = await self._read_body(headers, receive, refuse)
        if body is None:
            return
        scope.setdefault("state", {})["cache_namespace"] = key_namespace(key)
        replayed = False

        async def replay():  # the body once, then the client's own messages (so disconnects are seen)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _host_allowed(self, name: str) -> bool:
        return is_loopback_address(name) or name in self.allowed_hosts

    def _key(self, headers: dict[bytes, bytes]) -> bytes | None:
        """The configured key the request's Bearer token (or, as Anthropic's clients send it, its x-api-key header)
        matches, or None."""
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get(b"x-api-key", b"")
        token = token.strip()
        # compare_digest takes the same time wherever the first difference is; every key is compared
        matches = [key for key in self.api_keys if hmac.compare_digest(token, key)]
        return matches[0] if matches else None

    async def _read_body(self, headers: dict[bytes, bytes], receive, refuse) -> bytes | None:
        """The whole body, or None after refusing it with 413 (too large) or 408 (too slow), or when the client
        left."""
        limits = self.body
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limits.max_bytes:  # refused before waiting for any of it
            return await self._too_large(refuse)
        chunks, size = [], 0
        deadline = time.monotonic() + limits.total_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), min(limits.idle_timeout, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await refuse(408, "the request body arrived too slowly", code="body_timeout")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limits.max_bytes:
                return await self._too_large(refuse)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, refuse) -> None:
        await refuse(413, f"the request body exceeds {self.body.max_bytes} bytes", code="body_too_large")
