"""Assemble the ASGI app: CORS (only when origins are given) around the gate around the routes."""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware

from ..engine import Engine
from .middleware import BodyLimits, ServerGate
from .openai import ServerState, create_app


def build_app(model, engine: Engine, served_name: str, *, api_keys: list[str], cors_origins: list[str],
              body: BodyLimits, allowed_hosts: frozenset[str] | None, log_prompts: bool = False):
    """Returns (the ASGI app, its gate: the switch for draining and the requests in flight)."""
    gate = ServerGate(create_app(ServerState(model, engine, served_name, log_prompts)), api_keys=api_keys,
                      body=body, allowed_hosts=allowed_hosts)
    if not cors_origins:
        return gate, gate
    return CORSMiddleware(gate, allow_origins=cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                          allow_headers=["Authorization", "Content-Type"]), gate
