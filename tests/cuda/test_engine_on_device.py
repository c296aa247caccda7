"""The engine unchanged on the CUDA backend (its kernels under the interpreter without a GPU): sequences batched in
one step, the prefix cache copying device KV rows, and greedy tokens as the reference backend's."""

import threading

import numpy as np
import pytest

from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.loader import load_model_file
from deeproots.sampling import SamplingParams

pytestmark = pytest.mark.slow  # a tiny checkpoint converted, a few interpreted decode steps

GREEDY = SamplingParams(temperature=0.0)
SHARED = "The quick brown fox jumps over the lazy dog, again and again."


def run(engine, ids: list[int], max_tokens: int = 3) -> threading.Event:
    events, done = [], threading.Event()

    def on_event(event):
        events.append(event)
        if isinstance(event, Exception) or event.finish_reason is not None:
            done.set()
    engine.submit(GenerationRequest(ids, GREEDY, max_tokens, on_event))
    done.events = events
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
