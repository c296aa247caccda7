"""The engine: a background thread that owns the model and advances every running sequence together.

Each step: drop cancelled sequences (freeing their KV), admit waiting requests, then run ONE forward
pass over the packed new tokens of every running sequence: the next block of a new prompt (prefill) or
the last sampled token (decode).

Prefill is chunked: at most `prefill_chunk` prompt tokens per sequence per step, so decoding sequences
keep advancing while a long prompt runs, and chunks end on prefix-cache block edges so every full
block can be cached. Every primitive of the fast path computes a row the same way whatever else is in
the call, so a token's result does not depend on the chunking, on a cached prefix, or on the batch:
a request gets the same answer alone or under load. Callers talk to it
from any thread: submit() and GenerationRequest.cancel() are thread-safe, results come back through
each request's on_event callback (all of a step's events for one dispatcher in one call, see request.py).

After the forward pass, a step samples every decoding sequence in one batched draw
(generate.decode_batch): the per-step work outside the network does not grow with the vocabulary
per sequence.

A pipeline of stages (parallel/pipeline.py) keeps one step per stage in flight (`steps_in_flight`): each step
launches the forward pass of its share of the sequences not in flight, and lands (samples) the oldest once that
many are in flight, so the stages work on different steps at once. One in flight elsewhere: launched, landed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import RequestError
from ..draft import make_speculator
from ..generate import SequenceDecoder, decode_batch
from ..speculative import SpeculationConfig
from ..loader import LoadedModel
from .prefix_cache import PrefixCache
from .request import EmbeddingRequest, EmbeddingResult, EngineStoppedError, GenerationRequest, Sequence, SequenceEvent
from .runner import BatchRunner, pooled_embedding
from .scheduler import Scheduler

log = logging.getLogger("deeproots.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    max_running: int = 8  # sequences decoded together
    max_queue: int = 64  # requests waiting beyond that; more are refused
    kv_budget_tokens: int | None = None  # KV tokens for all running sequences; default max_running x context
    prefix_block: int = 32  # tokens per prefix-cache entry
    prefill_chunk: int = 256  # most prompt tokens a sequence runs per step (a multiple of prefix_block)
    prefix_capacity_tokens: int | None = None  # default: one context
    speculation: SpeculationConfig = SpeculationConfig()  # speculative decoding (off by default)
    draft_model: str | os.PathLike | None = None  # the draft model of speculation "draft"

    def __post_init__(self) -> None:
        if self.prefix_block < 1 or self.prefill_chunk < self.prefix_block or self.prefill_chunk % self.prefix_block:
            raise RequestError(f"prefill_chunk ({self.prefill_chunk}) must be a positive multiple of "
                               f"prefix_block ({self.prefix_block})")


@dataclass(frozen=True)
class Flight:
    """A forward pass launched and not yet landed: its sequences and their tokens, the logits rows wanted of each,
    the call giving its results (BatchRunner.launch), and when its step began."""
    batch: list[tuple[Sequence, list[int]]]
    wanted: list[int]
    results: Callable[[], tuple]
    started: float


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    kv_usage: float  # reserved / budget
    prompt_tokens: int  # run through the network (prefix-cache hits excluded)
    cached_prompt_tokens: int  # taken from the prefix cache
    generated_tokens: int
    decode_tokens_per_second: float  # over the last few seconds of steps
    steps: int


class Engine:
    def __init__(self, model: LoadedModel, config: EngineConfig = EngineConfig()):
        """`model`: the network on its backend, with its tokenizer and config (loader.load_model_file)."""
        self.model = model
        self.config = config
        self.runner = BatchRunner(model.net)
        self.speculator = make_speculator(model, config.speculation, config.draft_model)
        budget = config.kv_budget_tokens or config.max_running * model.context
        self.scheduler = Scheduler(max_running=config.max_running, max_queue=config.max_queue,
                                   kv_budget_tokens=budget, context=model.context)
        capacity = config.prefix_capacity_tokens or model.context
        self.prefix_cache = PrefixCache(block_size=config.prefix_block, capacity_tokens=capacity,
                                        mirror=model.backend.prefix_mirror)
        self._lock = threading.Lock()  # guards the scheduler's queue between callers and the loop
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], concurrent.futures.Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="deeproots-engine", daemon=True)
        self._prompt_tokens = self._generated_tokens = self._steps = 0
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tokens decoded) of recent steps
        self._in_flight: deque[Flight] = deque()  # launched forward passes, oldest first

    # --- called from any thread ----------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def submit(self, request: GenerationRequest | EmbeddingRequest) -> None:
        """Queue a request; QueueFullError when the queue is full, RequestError when it can never run."""
        if not self.alive:
            raise EngineStoppedError("the engine is not running")
        room = self.model.context - (0 if isinstance(request, EmbeddingRequest) else 1)  # generating needs one more
        if len(request.prompt_ids) > room:
            raise RequestError(f"the prompt has {len(request.prompt_ids)} tokens but the context holds "
                               f"{self.model.context}; shorten it (or start the server with a larger --ctx)")
        with self._lock:
            self.scheduler.submit(request)
        self._wakeup.set()

    def call(self, job: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `job` on the engine thread between two steps (it owns the model)."""
        if not self.alive:
            raise EngineStoppedError("the engine is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((job, future))
        self._wakeup.set()
        return future

    def stats(self) -> EngineStats:
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t < 5.0]
        span = now - recent[0][0] if recent else 0.0
        with self._lock:
            return EngineStats(
                waiting=len(self.scheduler.waiting), running=len(self.scheduler.running),
                kv_usage=self.scheduler.kv_usage, prompt_tokens=self._prompt_tokens,
                cached_prompt_tokens=self.prefix_cache.hit_tokens, generated_tokens=self._generated_tokens,
                decode_tokens_per_second=sum(n for _, n in recent) / span if span > 0 else 0.0, steps=self._steps)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self.scheduler.waiting and not self.scheduler.running

    # --- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._run_jobs()
            if self.idle:
                self._wakeup.wait(0.5)
                self._wakeup.clear()
                continue
            self.step()
        self._land_all()
        with self._lock:
            leftovers = [*self.scheduler.waiting, *(s.request for s in self.scheduler.running)]
        self._deliver([(request, EngineStoppedError("the server is shutting down")) for request in leftovers])

    def _run_jobs(self) -> None:
        if not self._jobs.empty():
            self._land_all()  # a job may use the model: no pass of ours in flight
        while not self._jobs.empty():
            job, future = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except Exception as error:  # the caller gets it; the engine carries on
                    future.set_exception(error)

    def step(self) -> None:
        """One scheduling step: launch one batched forward pass, then land the oldest in flight when the backend's
        `steps_in_flight` are in flight (with one: the pass just launched) or when there was nothing to launch."""
        with self._lock:
            flying = self._flying()
            cancelled = [sequence for sequence in self.scheduler.drop_cancelled() if id(sequence) not in flying]
            admitted = self.scheduler.admit()
        for sequence in cancelled:  # one in flight is retired once it lands
            self._retire(sequence)
        for request in admitted:
            self._start(request)
        started = time.perf_counter()
        batch = self._plan(flying)  # with this step's drafts: their time is part of the step's
        if batch:
            self._launch(batch, started)
        if self._in_flight and (not batch or len(self._in_flight) >= self.model.backend.steps_in_flight):
            self._land(self._in_flight.popleft())

    def _flying(self) -> set[int]:
        """The ids of the sequences in a pass in flight."""
        return {id(sequence) for flight in self._in_flight for sequence, _ in flight.batch}

    def _land_all(self) -> None:
        while self._in_flight:
            self._land(self._in_flight.popleft())

    def _fail(self, batch: list[tuple[Sequence, list[int]]], error: Exception) -> None:
        log.error("forward pass failed; failing the %d sequences in it", len(batch), exc_info=error)
        for sequence, _ in batch:
            self._retire(sequence)
        self._deliver([(sequence.request, error) for sequence, _ in batch])

    def _launch(self, batch: list[tuple[Sequence, list[int]]], started: float) -> None:
        # logits rows per sequence: the last token's, or with drafts the pending token's and every draft's
        wanted = [0 if sequence.embedding else len(sequence.proposal.drafts) + 1 if sequence.proposal else 1
                  for sequence, _ in batch]
        try:
            results = self.runner.launch([(sequence.cache, tokens) for sequence, tokens in batch],
                                         [sequence.embedding for sequence, _ in batch], wanted)
        except Exception as error:
            self._fail(batch, error)
            return
        self._in_flight.append(Flight(batch, wanted, results, started))

    def _land(self, flight: Flight) -> None:
        """The results of a pass: sample, verify drafts, finish embeddings."""
        batch, wanted, started = flight.batch, flight.wanted, flight.started
        try:
            logits, hidden = flight.results()
        except Exception as error:
            self._fail(batch, error)
            return
        self._steps += 1
        sampling, rows = [], []  # sequences that sample now (decoding, or done with their prompt), their logits rows
        verifying = []  # sequences with drafts, and their logits rows (k + 1, vocab)
        embedded = []  # embeddings whose whole input has run
        row = 0  # the first logits row of the sequence at hand: embeddings have none
        plain_step = all(not sequence.prefilling for sequence, _ in batch)  # a decode step: measured for the cost
        for index, (sequence, tokens) in enumerate(batch):
            sequence.pending = sequence.pending[len(tokens):]
            if sequence.prefilling:
                self._prompt_tokens += len(tokens)
            if sequence.embedding:
                sequence.hidden.append(hidden[index])
                if not sequence.pending:
                    embedded.append(sequence)
                continue
            first, row = row, row + wanted[index]
            if sequence.prefilling:
                if sequence.pending:
                    continue  # more prompt to run before this sequence samples
                sequence.prefilling = False
                self.prefix_cache.store(sequence.request.prompt_ids, sequence.cache, sequence.request.cache_namespace)
            if sequence.proposal:
                verifying.append((sequence, logits[first:row]))
                continue
            sampling.append(sequence)
            rows.append(row - 1)
        if sampling:
            self._decode(sampling, logits if len(rows) == len(logits) else logits[rows])
        produced = len(rows) + self._verify(verifying)
        if self.speculator and plain_step:
            self.speculator.cost.observe(sum(len(tokens) for _, tokens in batch), time.perf_counter() - started)
        self._finish_embeddings(embedded)
        self._recent.append((time.perf_counter(), produced))

    def _finish_embeddings(self, sequences: list[Sequence]) -> None:
        for sequence in sequences:
            self._retire(sequence)
        self._deliver([(sequence.request, EmbeddingResult(pooled_embedding(sequence.hidden)))
                       for sequence in sequences])

    def _start(self, request: GenerationRequest | EmbeddingRequest) -> None:
        reserved = self.scheduler.reservation(request)
        try:
            cache = self.model.new_cache(reserved)
            # An embedding needs the hidden state of every input token: no prefix of it may come from the cache.
            decoder = None if isinstance(request, EmbeddingRequest) else self._decoder(request, cache)
        except Exception as error:
            with self._lock:
                self.scheduler.release(reserved)
            self._deliver([(request, error)])
            return
        speculation = self.speculator.start(request.prompt_ids) if self.speculator and decoder else None
        with self._lock:
            self.scheduler.start(Sequence(request, cache, decoder, speculation))

    def _decoder(self, request: GenerationRequest, cache) -> SequenceDecoder:
        """The request's sampler and detokenizer, after its cached prompt prefix was copied into `cache`."""
        request.cached_tokens = self.prefix_cache.load(request.prompt_ids, cache, request.cache_namespace)
        return SequenceDecoder(self.model.tokenizer, request.prompt_ids, request.params, max_tokens=request.max_tokens,
                               stop=request.stop, constraint=request.constraint() if request.constraint else None,
                               top_logprobs=request.top_logprobs)

    def _plan(self, flying: set[int]) -> list[tuple[Sequence, list[int]]]:
        """The tokens for this step of each running sequence not in flight (in a pipeline, of a stage's share of
        the running sequences, so that every stage has a step to work on): its last sample, or its next prompt
        chunk."""
        block, chunk = self.config.prefix_block, self.config.prefill_chunk
        running = self.scheduler.running
        share = -(-len(running) // self.model.backend.steps_in_flight)  # ceil
        batch = []
        for sequence in [sequence for sequence in running if id(sequence) not in flying][:share]:
            if sequence.prefilling:
                # Up to `chunk` tokens, ending on a block edge when the prompt goes on past it.
                batch.append((sequence, sequence.pending[:chunk - sequence.cache.offset % block]))
            else:
                batch.append((sequence, sequence.pending))
        self._propose([sequence for sequence, _ in batch if sequence.speculation and not sequence.prefilling])
        return [(sequence, tokens + sequence.proposal.drafts if sequence.proposal else tokens)
                for sequence, tokens in batch]

    def _propose(self, decoding: list[Sequence]) -> None:
        """This step's drafts of the decoding sequences (none while the batch is full: every slot taken, or
        requests waiting, when more rows would only slow the others down)."""
        for sequence in decoding:
            sequence.proposal = None
        if not decoding or len(self.scheduler.running) >= self.config.max_running or self.scheduler.waiting:
            return
        proposals = self.speculator.propose([sequence.speculation for sequence in decoding],
                                            [sequence.decoder for sequence in decoding],
                                            [sequence.cache.room() for sequence in decoding])
        for sequence, proposal in zip(decoding, proposals):
            sequence.proposal = proposal if proposal.drafts else None

    def _decode(self, sequences: list[Sequence], logits) -> None:
        """Sample the next token of every sequence from its row of logits (B, vocab), all in one batched draw."""
        results = decode_batch([sequence.decoder for sequence in sequences], logits,
                               [sequence.cache.room() for sequence in sequences])
        events: list[tuple[GenerationRequest, SequenceEvent]] = []
        for sequence, result in zip(sequences, results):
            events.append((sequence.request, result))
            if isinstance(result, Exception):
                self._retire(sequence)
                continue
            self._generated_tokens += 1
            if sequence.speculation:
                self.speculator.plain(sequence.speculation, result.token_id)
            if result.finish_reason is not None:
                self._retire(sequence)
            else:
                sequence.pending = [result.token_id]
        self._deliver(events)

    def _verify(self, verifying: list[tuple[Sequence, object]]) -> int:
        """Check each sequence's drafts against its logits rows (k + 1, vocab); drop the rejected rows from its
        cache. Returns the tokens emitted."""
        events: list[tuple[GenerationRequest, SequenceEvent]] = []
        for sequence, logits in verifying:
            proposal, cache, request = sequence.proposal, sequence.cache, sequence.request
            offset = cache.offset - len(proposal.drafts) - 1  # before this step's rows
            steps = self.speculator.verify(sequence.decoder, logits, proposal, cache.max_tokens - offset)
            cache.truncate(offset + len(steps))  # the pending token's row and the kept drafts'
            kept = self.speculator.verified(sequence.speculation, proposal, steps)
            request.accepted_draft_tokens += kept
            request.rejected_draft_tokens += len(proposal.drafts) - kept
            sequence.proposal = None
            events.extend((request, step) for step in steps)
            last = steps[-1]
            self._generated_tokens += len(steps) - isinstance(last, Exception)
            if isinstance(last, Exception) or last.finish_reason is not None:
                self._retire(sequence)
            else:
                sequence.pending = [last.token_id]
        self._deliver(events)
        return sum(1 for _, step in events if not isinstance(step, Exception))

    def _deliver(self, events: list[tuple[GenerationRequest, SequenceEvent]]) -> None:
        """Report events: one dispatch() per dispatcher for all its events, else each request's on_event here."""
        batches: dict[int, tuple[object, list]] = {}
        for request, event in events:
            if request.dispatcher is None:
                self._call(request.on_event, event)
            else:
                _, deliveries = batches.setdefault(id(request.dispatcher), (request.dispatcher, []))
                deliveries.append((request.on_event, event))
        for dispatcher, deliveries in batches.values():
            try:
                dispatcher.dispatch(deliveries)
            except Exception:  # e.g. the receiving loop closed: its requests are cancelled by their owner
                log.exception("an event dispatcher failed")

    @staticmethod
    def _call(on_event: Callable[[SequenceEvent], None], event: SequenceEvent) -> None:
        try:
            on_event(event)
        except Exception:  # a caller's bug must not stop the engine for everyone
            log.exception("a request's on_event callback failed")

    def _retire(self, sequence: Sequence) -> None:
        with self._lock:
            self.scheduler.retire(sequence)  # the sequence's KV cache goes with it

