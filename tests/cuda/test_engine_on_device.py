"""The engine unchanged on the CUDA backend (its kernels under the interpreter without a GPU): sequences batched in
one step, the prefix cache copying device KV rows, greedy tokens as the reference backend's and the CPU engine's,
and its pure decode steps offered to the backend's decode_step (a graph replay on a GPU)."""

import gc
import threading
from collections import Counter

import numpy as np
import pytest

from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.loader import load_model_file
from deeproots.sampling import SamplingParams

pytestmark = pytest.mark.slow  # a tiny checkpoint converted, a few interpreted decode steps

GREEDY = SamplingParams(temperature=0.0)
SHARED = "The quick brown fox jumps over the lazy dog, again and again."


def request(ids: list[int], max_tokens: int) -> tuple[GenerationRequest, threading.Event]:
    events, done = [], threading.Event()

    def on_event(event):
        events.append(event)
        if isinstance(event, Exception) or event.finish_reason is not None:
            done.set()
    done.events = events
    return GenerationRequest(ids, GREEDY, max_tokens, on_event), done


def run(engine, ids: list[int], max_tokens: int = 3) -> threading.Event:
    generation, done = request(ids, max_tokens)
    engine.submit(generation)
    return done


def tokens(done: threading.Event) -> list[int]:
    assert done.wait(300), "the engine did not finish in time"
    assert not isinstance(done.events[-1], Exception), done.events[-1]
    return [event.token_id for event in done.events]


def greedy_reference(loaded, ids: list[int], n: int) -> list[int]:
    cache, out = loaded.new_cache(len(ids) + n), []
    logits = loaded.net.forward(np.asarray(ids, dtype=np.int64), cache)
    for _ in range(n):
        out.append(int(logits[-1].argmax()))
        logits = loaded.net.forward(np.asarray(out[-1:], dtype=np.int64), cache)
    return out


def test_batched_sequences_and_prefix_cache_on_device(q8_0_file, device):
    path = q8_0_file("llama")
    loaded = load_model_file(path, backend="cuda", device=device)
    reference = load_model_file(path, backend="reference")
    first = loaded.tokenizer.encode(SHARED + " One")
    second = loaded.tokenizer.encode(SHARED + " Two")
    engine = Engine(loaded, EngineConfig(max_running=4, prefix_block=8, prefill_chunk=16)).start()
    try:
        alone = tokens(run(engine, first))
        together = [run(engine, second), run(engine, first)]  # two sequences in each step
        second_tokens, first_again = (tokens(done) for done in together)
        reused = engine.stats().cached_prompt_tokens
    finally:
        engine.stop()
    assert first_again == alone == greedy_reference(reference, first, 3)
    assert second_tokens == greedy_reference(reference, second, 3)
    assert reused >= 8  # whole blocks of the shared prefix came from the device cache's copies


# Three prompts admitted in one step, the third two prefill chunks long: step 1 prefills all three, step 2 is mixed
# (two decodes, the third's second chunk), steps 3..5 decode only (the first sequence ends after step 3).
PROMPTS = [list(range(10, 22)), list(range(30, 44)), list(range(50, 74))]
MAX_TOKENS = [3, 5, 4]
PURE_DECODE_STEPS = 3


def served_tokens(loaded) -> tuple[list[list[int]], int]:
    """The greedy tokens of PROMPTS served together, and the engine's steps."""
    engine = Engine(loaded, EngineConfig(max_running=4, prefix_block=8, prefill_chunk=16)).start()
    try:
        requests = [request(ids, n) for ids, n in zip(PROMPTS, MAX_TOKENS)]
        # submitted from the engine thread between two steps, so that the next step admits all three
        engine.call(lambda: [engine.submit(generation) for generation, _ in requests]).result(60)
        out = [tokens(done) for _, done in requests]
        return out, engine.stats().steps
    finally:
        engine.stop()


def test_served_decode_steps_take_the_decode_step_route(q8_0_file, device):
    path = q8_0_file("llama")
    loaded = load_model_file(path, backend="cuda", device=device)
    graphs = loaded.backend.graphs
    served, steps = served_tokens(loaded)
    assert steps == 2 + PURE_DECODE_STEPS
    # every pure decode step, and no other, went to decode_step: on the CPU the graphs decline (the eager path runs)
    if device == "cpu":
        assert graphs.route == Counter(declined=PURE_DECODE_STEPS)
    else:  # one graph for the three sequences, one for the two left, replayed once
        assert graphs.route == Counter(captured=2, replayed=1)
        gc.collect()
        assert not graphs.captured  # the finished sequences' caches were freed, their graphs with them
        graphs.enabled = False
        assert served_tokens(loaded)[0] == served  # the eager engine path
        graphs.enabled = True
    assert served == served_tokens(load_model_file(path, backend="cpu"))[0]  # the CPU engine's (C kernels)
    reference = load_model_file(path, backend="reference")
    assert served == [greedy_reference(reference, ids, n) for ids, n in zip(PROMPTS, MAX_TOKENS)]
