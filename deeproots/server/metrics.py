"""Prometheus metrics: request counts and latencies measured by the server, engine state read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..engine import Engine

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector:
    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats()
        yield GaugeMetricFamily("deeproots_queue_depth", "Requests waiting for a sequence slot", value=s.waiting)
        yield GaugeMetricFamily("deeproots_running_sequences", "Sequences being generated", value=s.running)
        yield GaugeMetricFamily("deeproots_kv_usage_ratio", "Share of the KV budget reserved", value=s.kv_usage)
        yield GaugeMetricFamily("deeproots_decode_tokens_per_second", "Generated tokens/s over the last 5 s",
                                value=s.decode_tokens_per_second)
        # Prompt tokens whether run or reused from the prefix cache: a per-cache-hit counter would let one client
        # see whether another's prompt starts like its own guess (docs/server.md, "Prefix cache isolation").
        yield CounterMetricFamily("deeproots_prompt_tokens", "Prompt tokens of the requests (run or taken from the "
                                  "prefix cache)", value=s.prompt_tokens + s.cached_prompt_tokens)
        yield CounterMetricFamily("deeproots_generation_tokens", "Tokens generated", value=s.generated_tokens)
        yield CounterMetricFamily("deeproots_engine_steps", "Batched forward passes", value=s.steps)


class ServerMetrics:
    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        self.requests = Counter("deeproots_requests", "HTTP requests served", ["endpoint", "status"],
                                registry=self.registry)
        self.time_to_first_token = Histogram("deeproots_time_to_first_token_seconds",
                                             "From request arrival to the first generated token",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("deeproots_request_latency_seconds", "From request arrival to the last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
