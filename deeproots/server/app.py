"""Assemble the ASGI app: CORS (only when origins are given) around the gate around the model leases around the
routes."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware

from . import anthropic, ollama, openai_responses
from .conversations import ConversationStore, default_path
from .middleware import BodyLimits, ServerGate
from .openai import create_app
from .pool import ModelLeases, ModelPool
from .state import ServerState
from .webui import WithWebPage, conversations_router, model_router


def build_app(pool: ModelPool, *, api_keys: list[str], cors_origins: list[str], body: BodyLimits,
              allowed_hosts: frozenset[str] | None, log_prompts: bool = False):
    """Returns (the ASGI app, its gate: the switch for draining and the requests in flight)."""
    api = create_app(ServerState(pool, log_prompts))
    api.include_router(anthropic.router)
    api.include_router(openai_responses.router)
    api.include_router(ollama.router)
    api.include_router(conversations_router(ConversationStore(default_path())))
    api.include_router(model_router(pool.models))
    gate = ServerGate(ModelLeases(api), api_keys=api_keys, body=body, allowed_hosts=allowed_hosts)
    if not cors_origins:
        return WithWebPage(gate), gate
    return WithWebPage(CORSMiddleware(gate, allow_origins=cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                                      allow_headers=["Authorization", "Content-Type"])), gate
