"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}, and the handlers that make them.

A client's mistake is a 4xx naming what was wrong (and one log line saying so); anything else
(deeproots.errors.InternalError, an unexpected exception, an engine failure) is a 500 whose message names an error
id, logged with the traceback.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..engine import EngineStoppedError, QueueFullError
from ..errors import RequestError

RETRY_AFTER_SECONDS = 1
log = logging.getLogger("deeproots.server")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, type=self.type, code=self.code)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, type=self.type, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code or str(status)}}


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None, **fields) -> JSONResponse:
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else {}
    return JSONResponse(error_body(status, message, **fields), status_code=status, headers={**retry, **(headers or {})})


def log_rejected(method: str, path: str, status: int, message: str) -> None:
    """The one log line of a request refused with a 4xx: which route, the status and why."""
    if status < 500:
        log.info("rejected %s %s status=%d: %s", method, path, status, message)


def internal_error(error: BaseException) -> APIError:
    """A 500 naming a fresh error id; the log line under that id holds the traceback (the client never sees it)."""
    error_id = f"err_{secrets.token_hex(8)}"
    log.error("internal error %s: %s: %s", error_id, type(error).__name__, error, exc_info=error)
    return APIError(500, f"internal server error (id {error_id}); the server log has the details",
                    type="server_error", code="internal_error")


def as_api_error(error: BaseException) -> APIError:
    """The HTTP face of an exception raised while handling a request: only a client's mistake is a 4xx."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFullError):
        return APIError(429, str(error), type="rate_limit_error", code="queue_full")
    if isinstance(error, EngineStoppedError):
        return APIError(503, str(error), type="server_error", code="unavailable")
    if isinstance(error, RequestError):
        return APIError(400, str(error))
    return internal_error(error)


class ClassifiedRoute(APIRoute):
    """A route whose exceptions all end as OpenAI-shaped responses here, classified by as_api_error (Starlette
    would answer an unexpected one with a plain-text 500 and re-raise it into the server)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def classified(request: Request):
            try:
                return await handler(request)
            except (RequestValidationError, HTTPException):  # FastAPI's own: the app's handlers shape them
                raise
            except Exception as error:
                failure = as_api_error(error)
                log_rejected(request.method, request.url.path, failure.status, failure.message)
                return failure.response()

        return classified


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's and Starlette's own errors (invalid bodies, unknown routes, wrong methods) in the OpenAI shape."""
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request body"}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param or 'body'}: {first.get('msg')}"
        log_rejected(request.method, request.url.path, 400, message)
        return error_response(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "server_error" if error.status_code >= 500 else "invalid_request_error"
        log_rejected(request.method, request.url.path, error.status_code, str(error.detail))
        return error_response(error.status_code, str(error.detail), type=kind, headers=error.headers)
