"""Plain ASGI middleware (no BaseHTTPMiddleware, so client disconnects still reach the routes):
body size limit, Bearer API key, and refusing new work while the server drains for shutdown."""

from __future__ import annotations

import hmac
import json
from typing import Awaitable, Callable

from .errors import error_body

ASGIApp = Callable[..., Awaitable[None]]
OPEN_PATHS = frozenset({"/health"})  # reachable without the API key (load balancers probe it)


async def send_error(send, status: int, message: str, *, code: str | None = None, type: str = "invalid_request_error",
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(error_body(status, message, type=type, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class ServerGate:
    """Checks every HTTP request before the routes see it; counts the requests in flight."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.draining = False
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.draining:
            return await send_error(send, 503, "the server is shutting down", code="shutting_down",
                                    type="server_error", headers=[(b"retry-after", b"1")])
        if scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS" and not self._authorized(scope):
            return await send_error(send, 401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                    code="invalid_api_key", type="authentication_error")
        body = await self._read_body(receive, send)
        if body is None:
            return
        replayed = False

        async def replay():  # the body once, then the client's own messages (so disconnects are seen)
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        self.in_flight += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1

    def _authorized(self, scope) -> bool:
        if self.api_key is None:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest takes the same time wherever the first difference is
        return hmac.compare_digest(token.strip(), self.api_key) and scheme.lower() == b"bearer"

    async def _read_body(self, receive, send) -> bytes | None:
        """The whole body, or None after answering 413 (too large) or when the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_error(send, 413, f"the request body exceeds {self.max_body_bytes} bytes",
                                 code="body_too_large")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
