"""What the server can serve and what it holds: OpenAI's GET /v1/models and /v1/models/{id}, Ollama's GET
/api/tags (every servable model) and /api/ps (the loaded ones), in each API's own shapes.

Listings read model headers (once per model, cached by its ModelSource) on a worker thread."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter

from ..inspect import human_count
from ..store import disk_size
from .errors import ClassifiedRoute
from .pool import Resident
from .servable import OLLAMA_TAG, ModelSource, ServableModels
from .state import State

router = APIRouter(route_class=ClassifiedRoute)
FOREVER = "9999-12-31T23:59:59+00:00"  # /api/ps' expires_at of a model kept loaded whatever happens


# --- OpenAI ------------------------------------------------------------------------------------------------

def openai_entries(models: ServableModels) -> dict[str, dict]:
    """Every servable id (the default first, then models, then aliases) -> its /v1/models entry; `root` is the
    model an alias serves."""
    entries = {}
    for name in models.names:
        source = models.resolve(name)
        entries[name] = {"id": name, "object": "model", "created": int(source.modified), "owned_by": "deeproots",
                         "root": source.name, "max_model_len": source.context}
    return entries


@router.get("/v1/models")
async def list_models(state: State) -> dict:
    entries = await asyncio.to_thread(openai_entries, state.pool.models)
    return {"object": "list", "data": list(entries.values())}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> dict:
    entries = await asyncio.to_thread(openai_entries, state.pool.models)
    entry = entries.get(model_id) or entries.get(model_id.removesuffix(OLLAMA_TAG))
    if entry is None:
        state.pool.models.resolve(model_id)  # the 404, with the closest names
    return entry


# --- Ollama ------------------------------------------------------------------------------------------------

def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def ollama_model(source: ModelSource) -> dict:
    """The fields /api/tags and /api/ps share: name, model, digest and details (family, size, quantization)."""
    summary = source.summary
    details = {"parent_model": "", "format": "gguf" if source.path.is_file() else "safetensors",
               "family": summary.architecture if summary else "", "families": [summary.architecture] if summary else [],
               "parameter_size": human_count(summary.n_params) if summary else "",
               "quantization_level": summary.quantization if summary else ""}
    return {"name": source.name, "model": source.name, "digest": source.digest or "", "details": details}


def tags(models: ServableModels) -> dict:
    sources = [models.sources[name] for name in models.names if name in models.sources]
    return {"models": [{**ollama_model(source), "size": disk_size(Path(source.path)),
                        "modified_at": iso_time(source.modified)} for source in sources]}


def loaded(models: ServableModels, residents: dict[str, Resident]) -> dict:
    """Ollama's /api/ps entries, plus `requests_in_flight` and `idle_seconds` (which Ollama clients ignore)."""
    now = time.monotonic()
    entries = []
    for name, resident in residents.items():
        expires_in = resident.expires_in
        entries.append({**ollama_model(models.resolve(name)), "size": resident.memory.total, "size_vram": 0,
                        "expires_at": FOREVER if expires_in is None else iso_time(time.time() + expires_in),
                        "context_length": resident.served.model.context,
                        "requests_in_flight": resident.in_flight,
                        "idle_seconds": 0.0 if resident.in_flight else round(now - resident.idle_since, 3)})
    return {"models": entries}


@router.get("/api/tags")
async def list_tags(state: State) -> dict:
    return await asyncio.to_thread(tags, state.pool.models)


@router.get("/api/ps")
async def list_loaded(state: State) -> dict:
    residents = dict(state.pool.residents)  # as it is now: the listing runs on a worker thread
    return await asyncio.to_thread(loaded, state.pool.models, residents)
