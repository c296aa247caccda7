"""Embeddings go through the engine like every other request: chunked beside decoding, cancellable, bounded."""

import threading

import numpy as np
import pytest

from deeproots.engine import EmbeddingRequest, EmbeddingResult, Engine, EngineConfig, GenerationRequest
from deeproots.sampling import SamplingParams

pytestmark = pytest.mark.slow  # engines on the real model, and transformers

TEXT = ("Roots grow down into the soil, where they find water and minerals; above the ground the stem carries "
        "them up to the leaves, which turn light into sugar for the whole plant. ") * 6
HANG_GUARD_S = 600  # fails a hung engine; a correct one finishes far sooner on any machine


def embed(model, inputs: list[list[int]], *, prefill_chunk: int, decoding: int = 0) -> list[np.ndarray]:
    """Embed `inputs` on a fresh engine, optionally beside `decoding` greedy generations; the vectors in order."""
    engine = Engine(model.loaded, EngineConfig(max_running=8, prefill_chunk=prefill_chunk)).start()
    results: dict[int, list] = {index: [] for index in range(len(inputs))}
    finished = threading.Semaphore(0)

    def on_generation(event) -> None:
        if isinstance(event, Exception) or event.finish_reason is not None:
            finished.release()

    def on_embedding(index: int):
        return lambda event: (results[index].append(event), finished.release())

    try:
        prompt = model.tokenize("Once upon a time")
        for _ in range(decoding):
            engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0), 40, on_generation))
        for index, ids in enumerate(inputs):
            engine.submit(EmbeddingRequest(ids, on_embedding(index)))
        for _ in range(len(inputs) + decoding):
            assert finished.acquire(timeout=HANG_GUARD_S)
    finally:
        engine.stop()
    for events in results.values():
        assert len(events) == 1 and isinstance(events[0], EmbeddingResult), events
    return [results[index][0].vector for index in range(len(inputs))]


def test_embedding_matches_transformers_hidden_states(smollm2, hf_smollm2):
    """The pooled vector against HF transformers' final (normed) hidden states on the same GGUF, mean-pooled."""
    import torch

    ids = smollm2.tokenize(TEXT)[:200]
    [ours] = embed(smollm2, [ids], prefill_chunk=64)
    with torch.no_grad():
        hidden = hf_smollm2[1].model(torch.tensor([ids])).last_hidden_state[0].double()  # (T, d_model)
    theirs = (hidden.mean(0) / hidden.mean(0).norm()).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert abs(float(np.linalg.norm(ours)) - 1.0) < 1e-5
    assert float(ours @ theirs) > 0.999  # int8 activations and an f16 cache move it a little, never far


def test_chunks_and_batch_neighbours_do_not_change_a_bit(smollm2):
    """Run whole, in 32-token chunks, and beside decoding sequences: the same bits (row-invariant primitives)."""
    inputs = [smollm2.tokenize(TEXT)[:150], smollm2.tokenize("a kitten"), smollm2.tokenize(TEXT)[:77]]
    whole = embed(smollm2, inputs, prefill_chunk=256)
    chunked = embed(smollm2, inputs, prefill_chunk=32, decoding=3)
    for a, b in zip(whole, chunked):
        assert np.array_equal(a, b)


def test_cancelled_embedding_frees_its_reservation_and_reports_nothing(smollm2):
    engine = Engine(smollm2.loaded, EngineConfig(max_running=2, prefill_chunk=32)).start()
    events: list = []
    try:
        request = EmbeddingRequest(smollm2.tokenize(TEXT)[:1000], events.append)
        request.cancel()  # before its first chunk can run: it must never produce a result
        engine.submit(request)
        finished = threading.Event()
        engine.submit(EmbeddingRequest(smollm2.tokenize("after"), lambda event: finished.set()))
        assert finished.wait(HANG_GUARD_S)
        assert engine.call(lambda: engine.scheduler.reserved_tokens).result(10) == 0
    finally:
        engine.stop()
    assert events == []


def test_an_embedding_may_fill_the_whole_context_but_not_more(smollm2):
    engine = Engine(smollm2.loaded, EngineConfig()).start()
    try:
        engine.submit(EmbeddingRequest([1] * smollm2.context, lambda event: None))  # no room needed to generate
        with pytest.raises(Exception, match="context holds"):
            engine.submit(EmbeddingRequest([1] * (smollm2.context + 1), lambda event: None))
    finally:
        engine.stop()
