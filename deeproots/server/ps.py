"""`deeproots ps`: the models a running server holds, as a table, from its Ollama-shaped GET /api/ps."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx

from ..errors import RequestError
from ..inspect import human_bytes

FOREVER_AFTER_DAYS = 365 * 100  # an expiry this far off is "forever" (model_routes.FOREVER)


def fetch_loaded(url: str, api_key: str | None) -> list[dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url.rstrip("/") + "/api/ps", headers=headers, timeout=10)
    except httpx.HTTPError as error:
        raise RequestError(f"no server answers at {url} ({error}); start one with `deeproots serve` or give --url")
    if response.status_code == 401:
        raise RequestError(f"the server at {url} wants an API key: give --api-key or set DEEPROOTS_API_KEY")
    if response.status_code != 200:
        raise RequestError(f"the server at {url} answered /api/ps with {response.status_code}: {response.text[:200]}")
    try:
        return response.json()["models"]
    except (ValueError, KeyError, TypeError):
        raise RequestError(f"{url} answered /api/ps with something else than a model list: is it deeproots?")


def until(expires_at: str, now: datetime) -> str:
    seconds = (datetime.fromisoformat(expires_at) - now).total_seconds()
    if seconds > FOREVER_AFTER_DAYS * 86400:
        return "forever"
    return f"in {seconds / 60:.1f} min" if seconds >= 90 else f"in {max(seconds, 0):.0f} s"


def loaded_models_table(url: str, api_key: str | None) -> list[str]:
    """One header line and one line per loaded model: name, memory, context, idle time, when it unloads."""
    models = fetch_loaded(url, api_key)
    if not models:
        return ["No model is loaded."]
    now = datetime.now(timezone.utc)
    width = max(len("NAME"), *(len(model["name"]) for model in models))
    lines = [f"{'NAME':<{width}}  {'SIZE':>9}  {'PROCESSOR':<9}  {'CONTEXT':>7}  {'IDLE':<14}  UNTIL"]
    for model in models:
        busy = model.get("requests_in_flight", 0)
        idle = f"busy ({busy} req)" if busy else f"{model.get('idle_seconds', 0):.0f} s"
        lines.append(f"{model['name']:<{width}}  {human_bytes(model['size']):>9}  {'100% CPU':<9}  "
                     f"{model.get('context_length', 0):>7}  {idle:<14}  {until(model['expires_at'], now)}")
    return lines
