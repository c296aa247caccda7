"""The models a server holds in memory: each loaded on first use (off the event loop, once however many requests
wait for it), unloaded after an idle timeout (keep_alive, as Ollama's) or, least recently used first, when a
memory budget would be exceeded. Never while it has requests in flight.

A request holds the model it was served ("a lease") until its response has ended, streams included:
`ModelLeases` is the ASGI middleware that gives the leases back. Each loaded model has its own Engine, so
continuous batching works per model as it does with one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from ..draft import VocabularyMismatchError
from ..engine import Engine, EngineConfig
from ..engine.grammar import GrammarCompiler
from ..errors import DeeprootsError, InternalError, RequestError
from ..inspect import human_bytes
from ..memory import collect_unloaded_objects
from ..model import Model
from ..speculative import SpeculationConfig
from .chat_plan import template_message
from .errors import APIError
from .schemas import ChatMessage
from .servable import ModelSource, ServableModels

log = logging.getLogger("deeproots.server")
KEEP_ALIVE_SECONDS = 300.0  # Ollama's default: 5 minutes
REAP_INTERVAL_SECONDS = 0.2  # how often idle models are looked at
DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")  # Go's time.Duration units
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: str | float | int) -> float:
    """Seconds from Ollama's keep_alive forms: a number of seconds or a Go duration ("30s", "5m", "1h30m", "-1m").
    Negative: keep forever (-1.0); 0: unload once the request is done."""
    if isinstance(value, bool):
        raise RequestError(f"keep_alive must be seconds or a duration like '30s', '5m', '1h', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            body = text[1:] if text[:1] in "+-" else text
            parts = DURATION_PART.findall(body)
            if not parts or "".join(number + unit for number, unit in parts) != body:
                raise RequestError(f"keep_alive must be seconds or a duration like '30s', '5m', '1h', "
                                   f"got {value!r}") from None
            seconds = (-1.0 if text.startswith("-") else 1.0) * sum(
                float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise RequestError(f"keep_alive must be finite, got {value!r}")
    return -1.0 if seconds < 0 else seconds


@dataclass
class ServedModel:
    """One model the server can answer with: its weights, its engine, and the grammars compiled for its vocabulary."""
    name: str
    model: Model
    engine: Engine

    def __post_init__(self) -> None:
        self.grammars = GrammarCompiler(self.model.tokenizer, self.model.config.vocab_size)

    def chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        # Only the template's markup becomes control tokens; what the client wrote stays text.
        return self.model.apply_chat_template([template_message(m, i) for i, m in enumerate(messages)],
                                              tokenize=True)


@dataclass(frozen=True)
class MemoryEstimate:
    """What a loaded model holds: its weights (the file's tensor bytes, as `deeproots inspect` counts them; float32
    on the reference backend) and every KV cache its engine may reserve at once (the running sequences' budget plus
    the prefix cache's capacity)."""
    weights: int
    kv: int

    @property
    def total(self) -> int:
        return self.weights + self.kv

    def __str__(self) -> str:
        return f"{human_bytes(self.total)} (weights {human_bytes(self.weights)} + KV {human_bytes(self.kv)})"


@dataclass(frozen=True)
class LoadOptions:
    """How the server loads every model: `serve`'s --threads, --kv-type, --reference and engine options."""
    engine: EngineConfig = EngineConfig()
    threads: int | None = None
    kv_type: str | None = None
    reference: bool = False
    device: str = "cpu"  # --device: cpu, cuda or auto (device.py)
    tp: int = 1  # ranks of tensor parallelism (parallel/)
    tp_reduction: str = "exact"
    secret_file: str | None = None
    pp: int = 1  # pipeline stages (parallel/pipeline.py)
    pp_split: list[int] | None = None

    def kv_tokens(self, context: int) -> int:
        c = self.engine
        return (c.kv_budget_tokens or c.max_running * context) + (c.prefix_capacity_tokens or context)

    def estimate(self, source: ModelSource) -> MemoryEstimate:
        from ..backends.cpu import CPUBackend
        from ..backends.reference import ReferenceBackend

        summary = source.summary
        if summary is None:
            return MemoryEstimate(0, 0)  # an unreadable file: its load fails and says why
        kv_type = self.kv_type or (ReferenceBackend if self.reference else CPUBackend).default_kv_type
        weights = 4 * summary.n_params if self.reference else summary.weight_bytes
        return MemoryEstimate(weights, summary.kv_cache_bytes(self.kv_tokens(source.context), kv_type) or 0)

    def load(self, source: ModelSource) -> ServedModel:
        """The model with its engine, not yet started (a worker thread runs this)."""
        model = Model(source.path, context=source.requested_context, reference=self.reference,
                      threads=self.threads, kv_type=self.kv_type, device=self.device, tp=self.tp,
                      tp_reduction=self.tp_reduction, secret_file=self.secret_file, pp=self.pp, pp_split=self.pp_split)
        try:
            engine = Engine(model.loaded, self.engine)
        except VocabularyMismatchError as error:  # --draft-model drafts only for the models of its vocabulary
            log.warning("%s runs without drafts: %s", source.name, error)
            engine = Engine(model.loaded, replace(self.engine, speculation=SpeculationConfig(), draft_model=None))
        return ServedModel(source.name, model, engine)


@dataclass(eq=False)
class Resident:
    """A loaded model and what the pool decides by: its requests in flight, when it was last used and idle since,
    and how long it stays idle before it is unloaded (negative: forever)."""
    served: ServedModel
    memory: MemoryEstimate
    keep_alive: float
    last_used: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    def lease(self, keep_alive: float) -> None:
        self.in_flight += 1
        self.keep_alive = keep_alive  # the latest request's keep_alive holds from its end on, as in Ollama
        self.last_used = time.monotonic()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = self.idle_since = time.monotonic()

    @property
    def expires_in(self) -> float | None:
        """Seconds until it is unloaded if nothing uses it (from now when busy); None: never."""
        if self.keep_alive < 0:
            return None
        idle = 0.0 if self.in_flight else time.monotonic() - self.idle_since
        return max(self.keep_alive - idle, 0.0)

    @property
    def idle(self) -> bool:
        return not self.in_flight and self.served.engine.idle


_request_leases: ContextVar[list[Resident] | None] = ContextVar("deeproots_request_leases", default=None)


class ModelLeases:
    """ASGI middleware: the models a request was served stay leased until its response has ended (a stream's
    last byte, or the client leaving); then they are given back to the pool."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        leases: list[Resident] = []
        token = _request_leases.set(leases)
        try:
            await self.app(scope, receive, send)
        finally:
            _request_leases.reset(token)
            for resident in leases:
                resident.release()


class ModelPool:
    """Loads, serves and unloads the servable models. Its state changes on the event loop only."""

    def __init__(self, models: ServableModels, options: LoadOptions = LoadOptions(), *,
                 keep_alive: float = KEEP_ALIVE_SECONDS, max_memory: int | None = None):
        self.models, self.options = models, options
        self.keep_alive, self.max_memory = keep_alive, max_memory
        self.residents: dict[str, Resident] = {}
        self.loads: Counter[str] = Counter()  # loads per model, for /metrics
        self._loads: dict[str, asyncio.Future] = {}  # loads in progress
        self._reserved: dict[str, MemoryEstimate] = {}  # what those loads will hold
        self._waiting: Counter[str] = Counter()  # requests waiting for a model's load (not yet leasing it)
        self._unloading: dict[asyncio.Future, MemoryEstimate] = {}
        self._room = asyncio.Lock()  # one load at a time decides what to evict

    # --- serving ------------------------------------------------------------------------------
    async def served(self, name: str | None, keep_alive: float | None = None) -> ServedModel:
        """The model a request names (None: the default), loaded if it is not; leased to the request until its
        response ends. keep_alive: seconds it stays loaded once idle (None: the server's --keep-alive)."""
        source = self.models.resolve(name)
        resident = self.residents.get(source.name)
        if resident is None:
            self._waiting[source.name] += 1
            try:
                await asyncio.shield(self._load_once(source))
            finally:
                self._waiting[source.name] -= 1
            resident = self.residents[source.name]
        leases = _request_leases.get()
        if leases is None:  # outside a request (a direct call): nothing to give back
            resident.last_used = resident.idle_since = time.monotonic()
            return resident.served
        resident.lease(self.keep_alive if keep_alive is None else keep_alive)
        leases.append(resident)
        return resident.served

    def preload(self, name: str) -> ServedModel:
        """Load a model before the server starts (no event loop yet)."""
        source = self.models.resolve(name)
        started = time.perf_counter()
        try:
            memory = self._check_fits(source)
        except APIError as error:
            raise RequestError(error.message) from None
        self._register(source, self.options.load(source), memory, time.perf_counter() - started)
        return self.residents[source.name].served

    def _load_once(self, source: ModelSource) -> asyncio.Future:
        """The load of `source` in progress, started if none is: every request for a cold model waits on one."""
        if source.name not in self._loads:
            load = self._loads[source.name] = asyncio.ensure_future(self._load(source))
            load.add_done_callback(lambda done: self._loads.pop(source.name))
        return self._loads[source.name]

    async def _load(self, source: ModelSource) -> None:
        started = time.perf_counter()
        async with self._room:
            memory = self._check_fits(source)
            await self._make_room(source, memory)
            self._reserved[source.name] = memory
        try:
            served = await asyncio.to_thread(self.options.load, source)
        except (DeeprootsError, OSError) as error:
            if isinstance(error, InternalError):
                raise
            log.error("could not load %s: %s", source.name, error)
            raise APIError(500, f"model {source.name!r} could not be loaded: {error}", type="server_error",
                           code="model_load_failed") from error
        finally:
            del self._reserved[source.name]
        self._register(source, served, memory, time.perf_counter() - started)

    def _register(self, source: ModelSource, served: ServedModel, memory: MemoryEstimate, seconds: float) -> None:
        served.engine.start()
        gc.freeze()  # its objects live until it is unloaded: out of the collector's walks (memory.py)
        self.residents[source.name] = Resident(served, memory, self.keep_alive)
        self.loads[source.name] += 1
        log.info("loaded %s in %.2f s: about %s", source.name, seconds, memory)

    # --- memory budget ------------------------------------------------------------------------
    def _check_fits(self, source: ModelSource) -> MemoryEstimate:
        memory = self.options.estimate(source)
        if self.max_memory is not None and memory.total > self.max_memory:
            raise APIError(400, f"model {source.name!r} needs about {memory}, more than the server's memory budget "
                                f"(--max-memory {human_bytes(self.max_memory)}) on its own; restart the server with a "
                                "larger --max-memory, or a smaller --ctx, --parallel or --kv-budget",
                           param="model", code="model_too_large")
        return memory

    @property
    def held(self) -> int:
        """Bytes of the loaded models and the loads in progress."""
        return (sum(resident.memory.total for resident in self.residents.values())
                + sum(memory.total for memory in self._reserved.values()))

    @property
    def unloading(self) -> int:
        """Bytes the unloads in progress still hold."""
        return sum(memory.total for memory in self._unloading.values())

    async def _make_room(self, source: ModelSource, memory: MemoryEstimate) -> None:
        """Unload idle models, least recently used first, until `memory` fits in the budget (counting what the
        unloads in progress still hold until they are done)."""
        budget = self.max_memory
        while budget is not None and self.held + self.unloading + memory.total > budget:
            idle = [name for name, resident in self.residents.items() if self._unloadable(name, resident)]
            if self.held + memory.total > budget and idle:
                victim = min(idle, key=lambda name: self.residents[name].last_used)
                self._unload(victim, f"least recently used, to make room for {source.name}")
            elif self._unloading:
                await asyncio.wait(list(self._unloading))
            else:
                busy = ", ".join(self.residents)
                raise APIError(503, f"model {source.name!r} (about {memory}) does not fit in the memory budget "
                                    f"(--max-memory {human_bytes(budget)}) while {busy} answer requests; "
                                    "try again when they are done", type="server_error", code="memory_busy")

    def _unloadable(self, name: str, resident: Resident) -> bool:
        return resident.idle and not self._waiting[name]

    # --- unloading ----------------------------------------------------------------------------
    def _unload(self, name: str, why: str) -> None:
        resident = self.residents.pop(name)
        unloading = asyncio.ensure_future(self._forget(resident))
        self._unloading[unloading] = resident.memory
        unloading.add_done_callback(self._unloading.pop)
        log.info("unloading %s (%s)", name, why)

    @staticmethod
    async def _forget(resident: Resident) -> None:
        """Stop the engine, drop the last references to the model, and give its memory back (off the loop)."""
        engine = resident.served.engine
        del resident
        await asyncio.to_thread(engine.stop)
        del engine
        await asyncio.to_thread(collect_unloaded_objects)

    async def reap_forever(self) -> None:
        while True:
            self.reap()
            await asyncio.sleep(REAP_INTERVAL_SECONDS)

    def reap(self) -> None:
        """Unload every model idle for longer than its keep_alive. (A method of its own: no local variable of a
        loop that sleeps may keep an unloaded model alive.)"""
        for name, resident in list(self.residents.items()):
            if resident.expires_in == 0 and self._unloadable(name, resident):
                self._unload(name, f"idle for {resident.keep_alive:g} s")

    @property
    def idle(self) -> bool:
        return all(resident.served.engine.idle for resident in self.residents.values())

    @property
    def trouble(self) -> str | None:
        """Why some loaded model cannot serve (its engine loop died, or its tensor-parallel group lost a rank)."""
        for resident in self.residents.values():
            if not resident.served.engine.alive:
                return f"the engine loop of {resident.served.name} is not running"
            if resident.served.model.cluster is not None and resident.served.model.cluster.group.lost is not None:
                return f"{resident.served.name}: {resident.served.model.cluster.group.lost}"
        return None

    def stop_all(self) -> None:
        """Shutdown: stop every engine."""
        for resident in self.residents.values():
            resident.served.engine.stop()
        self.residents.clear()
