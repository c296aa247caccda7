"""Connection-level limits uvicorn does not have: a cap on open connections and a deadline for each request's
headers. uvicorn's own timeout only covers an idle keep-alive connection, so a client sending one header line
every few seconds (or nothing at all after connecting) would hold a connection forever."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import RequestError
from .errors import RETRY_AFTER_SECONDS, error_body


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int  # open at once; the next one is answered 503 and closed
    header_timeout: float  # seconds from connecting (or from the previous response) to the end of the headers

    def __post_init__(self) -> None:
        if self.max_connections < 1 or not self.header_timeout > 0:
            raise RequestError(f"connection limits must be positive, got {self}")


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for when no request was parsed (h11 has
    nothing to answer yet)."""
    body = json.dumps(error_body(status, message, type="server_error" if status >= 500 else "invalid_request_error",
                                 code=code)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n" + (f"retry-after: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else "") + "\r\n")
    return head.encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus ConnectionLimits."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(raw_error(503, "Service Unavailable", "too many open connections; retry later",
                                  "too_many_connections"))
            return
        self.arm_header_timer()

    def connection_lost(self, exc) -> None:
        self.disarm_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request line and headers arrived
            self.disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.arm_header_timer()  # the next request on this connection gets its own deadline

    def arm_header_timer(self) -> None:
        self.disarm_header_timer()
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self.headers_too_slow)

    def disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_too_slow(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.refuse(raw_error(408, "Request Timeout", "the request headers arrived too slowly", "header_timeout"))

    def refuse(self, response: bytes) -> None:
        self.transport.write(response)
        self.transport.close()


def limited_protocol(limits: ConnectionLimits):
    """What uvicorn.Config(http=...) takes: it calls this with its own arguments for every new connection."""
    return functools.partial(LimitedH11Protocol, limits=limits)
