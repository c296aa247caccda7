"""The web chat page: its static files at `/` and `/ui/...` (open, like any page: they hold no data), the
conversations REST API under `/api/conversations` and a model's description at `/api/model` (both
behind the API key like the rest).

The page itself talks to the OpenAI routes (/v1/models, /v1/chat/completions with stream=true) for generation;
this module only stores what it shows.
"""

from __future__ import annotations

import asyncio
import webbrowser
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .conversations import EXPORT_FORMAT, EXPORT_VERSION, ConversationNotFoundError, ConversationStore
from .errors import APIError, ClassifiedRoute
from .servable import ServableModels

STATIC = Path(__file__).parent / "static"
# No inline script or style anywhere: the page's own files only, and fetches to this server only.
# no-cache: browsers revalidate (ETag), so an upgraded server never runs with last version's scripts.
PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
MAX_MESSAGES = 10_000  # per imported conversation

Id = Annotated[str, Field(min_length=1, max_length=64)]
Title = Annotated[str, Field(min_length=1, max_length=200)]
Content = Annotated[str, Field(max_length=1 << 20)]
Role = Literal["system", "user", "assistant", "tool"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error here, not silently dropped


class NewConversation(Strict):
    title: Title = "New chat"
    settings: dict[str, Any] = {}


class ConversationChange(Strict):
    title: Title | None = None
    settings: dict[str, Any] | None = None
    current_leaf: Id | None = None


class NewMessage(Strict):
    role: Role
    content: Content
    parent_id: Id | None = None  # default: the current leaf; another message: a new branch from it
    branch: bool = False  # with parent_id null: a new first message (editing the first message)
    meta: dict[str, Any] = {}


class MessageChange(Strict):
    content: Content | None = None
    meta: dict[str, Any] | None = None


class ExportedMessage(Strict):
    id: Id
    parent_id: Id | None = None
    role: Role
    content: Content
    created: float | None = None
    meta: dict[str, Any] = {}


class ExportDocument(Strict):
    format: Literal[EXPORT_FORMAT]  # type: ignore[valid-type]
    version: Literal[EXPORT_VERSION]  # type: ignore[valid-type]
    title: Title
    created: float | None = None
    settings: dict[str, Any] = {}
    current_leaf: Id | None = None
    messages: list[ExportedMessage] = Field(max_length=MAX_MESSAGES)


@contextmanager
def as_http_errors():
    """An unknown conversation or message is 404; the store's other RequestErrors are 400s by ClassifiedRoute."""
    try:
        yield
    except ConversationNotFoundError as error:
        raise APIError(404, str(error), code="not_found") from error


def conversations_router(store: ConversationStore) -> APIRouter:
    """Plain `def` routes: FastAPI runs them in its thread pool, so SQLite never blocks the event loop."""
    router = APIRouter(prefix="/api/conversations", route_class=ClassifiedRoute)

    @router.get("")
    def list_conversations(q: Annotated[str | None, Query(max_length=200)] = None) -> dict:
        return {"data": store.list(q)}

    @router.post("", status_code=201)
    def create_conversation(body: NewConversation) -> dict:
        return store.create(body.title, body.settings)

    @router.post("/import", status_code=201)
    def import_conversation(body: ExportDocument) -> dict:
        with as_http_errors():
            return store.import_(body.model_dump())

    @router.get("/{conversation_id}")
    def get_conversation(conversation_id: str) -> dict:
        with as_http_errors():
            return store.get(conversation_id)

    @router.patch("/{conversation_id}")
    def change_conversation(conversation_id: str, body: ConversationChange) -> dict:
        with as_http_errors():
            return store.update(conversation_id, title=body.title, settings=body.settings,
                                current_leaf=body.current_leaf)

    @router.delete("/{conversation_id}", status_code=204)
    def delete_conversation(conversation_id: str) -> Response:
        with as_http_errors():
            store.delete(conversation_id)
        return Response(status_code=204)

    @router.get("/{conversation_id}/export")
    def export_conversation(conversation_id: str) -> dict:
        with as_http_errors():
            return store.export(conversation_id)

    @router.post("/{conversation_id}/messages", status_code=201)
    def append_message(conversation_id: str, body: NewMessage) -> dict:
        with as_http_errors():
            return store.append(conversation_id, body.role, body.content, parent_id=body.parent_id,
                                branch=body.branch, meta=body.meta)

    @router.patch("/{conversation_id}/messages/{message_id}")
    def edit_message(conversation_id: str, message_id: str, body: MessageChange) -> dict:
        with as_http_errors():
            return store.edit(conversation_id, message_id, content=body.content, meta=body.meta)

    return router


def model_router(models: ServableModels) -> APIRouter:
    """GET /api/model[?id=NAME]: what `deeproots inspect` knows about a servable model (default: the server's
    default), for the page's header, whether it is loaded or not."""
    router = APIRouter(route_class=ClassifiedRoute)

    @router.get("/api/model")
    def model_info(id: Annotated[str | None, Query(max_length=200)] = None) -> dict:
        source = models.resolve(id)
        summary = source.summary  # the file's header, read once per model
        if summary is None:
            raise APIError(500, f"cannot read the model file {source.path}", type="server_error")
        return {"id": source.name, "name": summary.name, "architecture": summary.architecture,
                "parameters": summary.n_params, "quantization": summary.quantization,
                "file_size": summary.file_size, "context": source.context,
                "has_chat_template": summary.has_chat_template}

    return router


def is_page_path(path: str) -> bool:
    return path == "/" or path.startswith("/ui/")


class WithWebPage:
    """In front of the whole API app: GET / and /ui/... are the page's static files, with security headers;
    everything else goes on to the API (and its key check)."""

    def __init__(self, api: ASGIApp):
        self.api = api
        self.page = Starlette(routes=[Route("/", lambda request: FileResponse(STATIC / "index.html")),
                                      Mount("/ui", StaticFiles(directory=STATIC))])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page_path(scope["path"]) or scope["method"] not in ("GET", "HEAD"):
            return await self.api(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *PAGE_HEADERS]}
            await send(message)

        await self.page(scope, receive, with_headers)


def page_address(host: str, port: int) -> str:
    """The chat page's address as a browser on this machine reaches it (a wildcard bind is reachable locally)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{port}/"


async def open_when_listening(server, address: str) -> None:
    """`serve --open`: the default browser on the page, once uvicorn accepts connections."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    await asyncio.to_thread(webbrowser.open, address)  # it may wait for the browser it starts
