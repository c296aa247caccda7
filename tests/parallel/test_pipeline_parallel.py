"""Pipeline parallelism: stages of layers in processes of their own (loopback), against one process. Every layer is
computed as one process computes it, so the logits are bit-identical and greedy text is identical (the tiny
checkpoints in two stages: test_tensor_parallel_ranks.py). Under load the engine keeps a step per stage in flight:
the same tokens as one process, and cancellation, with steps in flight."""

import time

import numpy as np
import pytest
from engine_events import Collector

import deeproots
from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.errors import RequestError
from deeproots.parallel.pipeline import split_layers
from deeproots.sampling import SamplingParams

TEXT = "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of"
# A story runs the whole greedy length whatever the CPU kernels (a haiku ends after ~22 tokens on AVX2 builds)
QUESTION = [{"role": "user", "content": "Write a long story about a dragon."}]
QUESTIONS = ["What is the capital of France?", "Write a haiku about roots.", "Name three rivers.",
             "Tell me a joke.", "Who wrote Hamlet?"]
# Greedy tokens decoded by stages of one rank, and of two tensor-parallel ranks each: four ranks on a 2-core machine
# take ~0.45 s a token (every collective waits for all four to be scheduled).
GREEDY_TOKENS = {1: 64, 2: 28}
ENGINE_TOKENS = {1: 32, 2: 16}


@pytest.fixture(scope="module")
def single(smollm2_path):
    return deeproots.load(smollm2_path, context=512, threads=1)


def test_layers_are_cut_evenly_or_where_asked():
    assert split_layers(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    assert split_layers(30, 3, [10, 22]) == [range(0, 10), range(10, 22), range(22, 30)]
    for bad in ([10], [22, 10], [0, 22], [10, 30]):
        with pytest.raises(RequestError, match="--pp-split"):
            split_layers(30, 3, bad)


@pytest.mark.slow  # starts rank processes
@pytest.mark.parametrize("stages, split, tp", [(2, None, 1), (3, [10, 22], 1), (2, [14], 2)])
def test_stages_give_one_process_logits_and_greedy_text(smollm2_path, single, stages, split, tp):
    """2 and 3 stages, and 2 stages of 2 tensor-parallel ranks each (4 ranks)."""
    model = deeproots.load(smollm2_path, context=512, threads=1, pp=stages, pp_split=split, tp=tp)
    try:
        ids = single.tokenize(TEXT)
        np.testing.assert_array_equal(model.logits(ids), single.logits(ids))
        tokens = GREEDY_TOKENS[tp]
        text = single.chat(QUESTION, max_tokens=tokens, temperature=0)
        assert len(single.tokenize(text)) >= tokens - 4  # not cut short by an end of turn
        assert model.chat(QUESTION, max_tokens=tokens, temperature=0) == text
    finally:
        model.close()


def test_without_a_split_the_layers_follow_each_hosts_available_memory():
    assert split_layers(30, 2, memory=[8000.0, 8000.0]) == [range(0, 15), range(15, 30)]
    assert split_layers(30, 2, memory=[24000.0, 8000.0]) == [range(0, 23), range(23, 30)]  # 22.5 : 7.5
    assert split_layers(32, 3, memory=[1000.0, 1.0, 1.0]) == [range(0, 30), range(30, 31), range(31, 32)]
    assert split_layers(30, 3, memory=[16000.0, 8000.0, 8000.0]) == [range(0, 15), range(15, 23), range(23, 30)]


def engine_answers(model, questions: list[str], max_tokens: int, batch_sizes: list[int] | None = None):
    """Greedy tokens and logprobs of `questions` decoded together by the engine (with each launched pass's number
    of sequences appended to `batch_sizes`)."""
    engine = Engine(model.loaded, EngineConfig(max_running=len(questions), max_queue=8))
    if batch_sizes is not None:
        launch = engine.runner.launch
        engine.runner.launch = lambda work, *rest: batch_sizes.append(len(work)) or launch(work, *rest)
    engine.start()
    collectors = [Collector() for _ in questions]
    try:
        for question, collector in zip(questions, collectors):
            ids = model.apply_chat_template([{"role": "user", "content": question}], tokenize=True)
            engine.submit(GenerationRequest(ids, SamplingParams(temperature=0.0), max_tokens, collector,
                                            top_logprobs=0))
        return [collector.logprobs() for collector in collectors]
    finally:
        engine.stop()


@pytest.mark.slow  # starts rank processes
@pytest.mark.parametrize("tp", [1, 2])
def test_stages_overlap_on_sequences_of_their_own_and_give_one_process_tokens(smollm2_path, single, tp):
    """Five sequences in two stages (of one rank, then of two tensor-parallel ranks each): every pass carries at
    most three of them (a stage's share; two passes in flight), and every token and logprob equals the single
    process's, which runs all five in one pass (row invariance: a row's bits do not depend on its neighbours)."""
    expected = engine_answers(single, QUESTIONS, ENGINE_TOKENS[tp])
    model = deeproots.load(smollm2_path, context=512, threads=1, pp=2, tp=tp)
    sizes: list[int] = []
    try:
        assert model.loaded.backend.steps_in_flight == 2
        assert engine_answers(model, QUESTIONS, ENGINE_TOKENS[tp], sizes) == expected
    finally:
        model.close()
    assert max(sizes) == 3  # 3 + 2 while all five run


@pytest.mark.slow  # starts rank processes
def test_sequences_cancelled_in_flight_free_their_slot_and_kv_while_the_others_go_on(smollm2_path):
    model = deeproots.load(smollm2_path, context=512, threads=1, pp=2)
    engine = Engine(model.loaded, EngineConfig(max_running=4, max_queue=4)).start()
    collectors = [Collector() for _ in range(4)]
    requests = [GenerationRequest(model.apply_chat_template([{"role": "user", "content": question}], tokenize=True),
                                  SamplingParams(temperature=0.0), 400, collector)
                for question, collector in zip(QUESTIONS, collectors)]
    try:
        for request in requests:
            engine.submit(request)
        while min(len(collector.events) for collector in collectors) < 3:
            time.sleep(0.01)
        for request in requests[::2]:  # one of each pass's share (sequences 1-2 and 3-4)
            request.cancel()
        deadline = time.time() + 60  # a hang guard, not a speed limit
        while engine.stats().running > 2 and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats().running == 2
        going = [len(collector.events) for collector in collectors[1::2]]
        time.sleep(0.5)
        assert all(len(collector.events) > n for collector, n in zip(collectors[1::2], going))
        for request in requests[1::2]:
            request.cancel()
        while engine.stats().running and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats().running == 0 and engine.stats().kv_usage == 0.0
    finally:
        engine.stop()
        model.close()


@pytest.mark.slow  # starts rank processes
def test_sequences_in_flight_reuse_a_cached_prefix_and_give_one_process_tokens(smollm2_path, single):
    """A long system prompt cached by a first request, then four requests sharing it decoded together: with steps in
    flight, the prefix cache's copies on rank 1 (sent with later steps) land in the right caches."""
    system = "You are a careful assistant who answers every question in one short, plain sentence. " * 4

    def answers(model) -> tuple[list, list[int]]:
        engine = Engine(model.loaded, EngineConfig(max_running=4, max_queue=8)).start()
        try:
            requests = [GenerationRequest(model.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": question}], tokenize=True),
                SamplingParams(temperature=0.0), 16, Collector(), top_logprobs=0) for question in QUESTIONS]
            engine.submit(requests[0])
            requests[0].on_event.wait()
            for request in requests[1:]:
                engine.submit(request)
            return [request.on_event.logprobs() for request in requests], [r.cached_tokens for r in requests]
        finally:
            engine.stop()

    expected, _ = answers(single)
    model = deeproots.load(smollm2_path, context=512, threads=1, pp=2)
    try:
        got, cached = answers(model)
    finally:
        model.close()
    assert got == expected
    assert cached[0] == 0 and min(cached[1:]) >= 64  # the system prompt's blocks, on every rank
