"""Error bodies in the shape of the API a path belongs to, and the handlers that make them.

OpenAI's {"error": {"message", "type", "param", "code"}} everywhere but under the Anthropic Messages paths
({"type": "error", "error": {"type", "message"}}) and Ollama's (/api/chat ...: {"error": "message"}), so each
official client raises its usual exceptions. A client's mistake is a 4xx naming what was wrong (and one log line
saying so); anything else
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

    def body(self, path: str = "") -> dict:
        return error_body(self.status, self.message, param=self.param, type=self.type, code=self.code, path=path)

    def response(self, path: str = "") -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, type=self.type, code=self.code,
                              path=path)


ANTHROPIC_PATHS = ("/v1/messages",)  # and /v1/messages/count_tokens
OLLAMA_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/show", "/api/version", "/api/tags", "/api/ps")
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def error_body(status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
               code: str | None = None, path: str = "") -> dict:
    """The error in the shape of the API that `path` belongs to (OpenAI's unless it is an Anthropic or Ollama one)."""
    if path.startswith(ANTHROPIC_PATHS):
        kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if path.startswith(OLLAMA_PATHS):  # "/api/embed" also covers the legacy "/api/embeddings"
        return {"error": message}
    return {"error": {"message": message, "type": type, "param": param, "code": code or str(status)}}


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None, **fields) -> JSONResponse:
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else {}
    return JSONResponse(error_body(status, message, **fields), status_code=status, headers={**retry, **(headers or {})})


def invalid_body_error(error: RequestValidationError) -> APIError:
    """A 400 naming the first field pydantic refused (or the body, when it is not JSON at all)."""
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request body"}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param)


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
    """A route whose exceptions all end as responses here, classified by as_api_error and shaped for the route's
    API (Starlette would answer an unexpected one with a plain-text 500 and re-raise it into the server)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def classified(request: Request):
            try:
                return await handler(request)
            except HTTPException:  # FastAPI's own: the app's handler shapes it
                raise
            except RequestValidationError as error:
                failure = invalid_body_error(error)
                log_rejected(request.method, request.url.path, 400, failure.message)
                return failure.response(self.path)
            except Exception as error:
                failure = as_api_error(error)
                log_rejected(request.method, request.url.path, failure.status, failure.message)
                return failure.response(self.path)

        return classified


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's and Starlette's own errors (invalid bodies, unknown routes, wrong methods) in the path's shape."""
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        failure = invalid_body_error(error)
        log_rejected(request.method, request.url.path, 400, failure.message)
        return failure.response(request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        kind = "server_error" if error.status_code >= 500 else "invalid_request_error"
        log_rejected(request.method, request.url.path, error.status_code, str(error.detail))
        return error_response(error.status_code, str(error.detail), type=kind, headers=error.headers,
                              path=request.url.path)
