"""What the routes share: the model pool (found by name through served()), the server's metrics and options.

Every route module takes it with the `State` dependency (it lives on `request.app.state`), so a route or helper
can be imported and called alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .metrics import ServerMetrics
from .pool import ModelPool, ServedModel


@dataclass
class ServerState:
    pool: ModelPool
    log_prompts: bool = False

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.pool)

    async def served(self, name: str | None, keep_alive: float | None = None) -> ServedModel:
        """The model a request names (None: the default), loaded on first use and held for the request until its
        response ends; an unknown name is a 404 with the closest names. keep_alive: seconds the model stays loaded
        once idle (Ollama's field; None: the server's --keep-alive, negative: forever, 0: unload after)."""
        return await self.pool.served(name, keep_alive)


def server_state(request: Request) -> ServerState:
    return request.app.state.deeproots


State = Annotated[ServerState, Depends(server_state)]
