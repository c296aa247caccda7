"""Prometheus metrics: request counts and latencies measured by the server, each loaded model's engine state
(labelled `model`) read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .pool import ModelPool

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# (kind, name, help, value from EngineStats), one series per loaded model
ENGINE_METRICS = [
    (GaugeMetricFamily, "deeproots_queue_depth", "Requests waiting for a sequence slot", lambda s: s.waiting),
    (GaugeMetricFamily, "deeproots_running_sequences", "Sequences being generated", lambda s: s.running),
    (GaugeMetricFamily, "deeproots_kv_usage_ratio", "Share of the KV budget reserved", lambda s: s.kv_usage),
    (GaugeMetricFamily, "deeproots_decode_tokens_per_second", "Generated tokens/s over the last 5 s",
     lambda s: s.decode_tokens_per_second),
    # Prompt tokens whether run or reused from the prefix cache: a per-cache-hit counter would let one client see
    # whether another's prompt starts like its own guess (docs/server.md, "Prefix cache isolation").
    (CounterMetricFamily, "deeproots_prompt_tokens", "Prompt tokens of the requests (run or taken from the prefix "
     "cache)", lambda s: s.prompt_tokens + s.cached_prompt_tokens),
    (CounterMetricFamily, "deeproots_generation_tokens", "Tokens generated", lambda s: s.generated_tokens),
    (CounterMetricFamily, "deeproots_engine_steps", "Batched forward passes", lambda s: s.steps),
]


class EngineCollector:
    """Each loaded model's engine state, labelled with the model's name (an unloaded model has no series), and how
    many times each model was loaded."""

    def __init__(self, pool: ModelPool):
        self.pool = pool

    def collect(self):
        stats = {name: resident.served.engine.stats() for name, resident in list(self.pool.residents.items())}
        for kind, metric, text, value in ENGINE_METRICS:
            family = kind(metric, text, labels=["model"])
            for name, engine_stats in stats.items():
                family.add_metric([name], value(engine_stats))
            yield family
        loads = CounterMetricFamily("deeproots_model_loads", "Times each model was loaded", labels=["model"])
        for name, count in list(self.pool.loads.items()):
            loads.add_metric([name], count)
        yield loads


class ServerMetrics:
    def __init__(self, pool: ModelPool):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(pool))
        self.requests = Counter("deeproots_requests", "HTTP requests served", ["endpoint", "status"],
                                registry=self.registry)
        self.time_to_first_token = Histogram("deeproots_time_to_first_token_seconds",
                                             "From request arrival to the first generated token",
                                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("deeproots_request_latency_seconds", "From request arrival to the last byte",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
