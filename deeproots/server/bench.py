"""bench-serve: concurrent streaming chat requests against a running server, level by level."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how rivers shape valleys.",
           "Describe a walk through a forest in autumn.", "Why do leaves change color?",
           "Write a letter to a friend about your garden.", "Explain what a compiler does.",
           "Describe the life of a honeybee.", "Tell the history of the bicycle."]


async def one_request(client: httpx.AsyncClient, index: int, max_tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed chat completion."""
    body = {"model": (await client.get("/v1/models")).json()["data"][0]["id"], "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}], "temperature": 0.7,
            "seed": index, "stream": True, "stream_options": {"include_usage": True}}
    started, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and any(choice["delta"].get("content") for choice in chunk["choices"]):
                first = time.perf_counter()
    return (first or time.perf_counter()) - started, tokens


async def run_level(url: str, api_key: str | None, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(index: int):
            async with semaphore:
                return await one_request(client, index, max_tokens)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(index) for index in range(n_requests)))
        wall = time.perf_counter() - started
    ttfts = sorted(ttft for ttft, _ in results)
    tokens = sum(count for _, count in results)
    return {"concurrency": concurrency, "requests": n_requests, "generated_tokens": tokens,
            "tokens_per_s": tokens / wall, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], "wall_s": wall}


def run_levels(url: str, api_key: str | None, levels: list[int], n_requests: int | None, max_tokens: int):
    """Yield one printable line per concurrency level."""
    yield f"{'concurrency':>11} {'requests':>8} {'tokens':>7} {'tokens/s':>9} {'ttft p50':>9} {'ttft p95':>9}"
    for level in levels:
        r = asyncio.run(run_level(url, api_key, level, n_requests or 2 * level, max_tokens))
        yield (f"{r['concurrency']:>11} {r['requests']:>8} {r['generated_tokens']:>7} {r['tokens_per_s']:>9.1f} "
               f"{r['ttft_p50_s']:>8.3f}s {r['ttft_p95_s']:>8.3f}s")
