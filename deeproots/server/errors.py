"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}, and the handlers that make them."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..engine import EngineStoppedError, QueueFullError
from ..errors import DeeprootsError, RequestError

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code


def error_body(status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code or str(status)}}


def error_response(status: int, message: str, **fields) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else None
    return JSONResponse(error_body(status, message, **fields), status_code=status, headers=headers)


def as_api_error(error: Exception) -> APIError:
    """The HTTP face of an exception raised while handling a request."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, QueueFullError):
        return APIError(429, str(error), type="rate_limit_error", code="queue_full")
    if isinstance(error, EngineStoppedError):
        return APIError(503, str(error), type="server_error", code="unavailable")
    if isinstance(error, (RequestError, DeeprootsError)):
        return APIError(400, str(error))
    return APIError(500, "internal error", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request body"}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        return error_response(400, f"{param or 'body'}: {first.get('msg')}", param=param)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error.status, error.message, param=error.param, type=error.type, code=error.code)

    @app.exception_handler(DeeprootsError)
    async def deeproots_error(request: Request, error: DeeprootsError) -> JSONResponse:
        api = as_api_error(error)
        return error_response(api.status, api.message, param=api.param, type=api.type, code=api.code)
