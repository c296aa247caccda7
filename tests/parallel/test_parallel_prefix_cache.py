"""The prefix cache in parallel mode (real ranks on loopback, the real default model): rank 0 decides which blocks a
sequence reuses and which go, every rank copies and drops the same blocks of its own heads (TP) or layers (PP), so
a prompt that reuses a cached prefix gets the tokens and logprobs one process gets running the whole prompt."""

import pytest
from engine_events import Collector

import deeproots
from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.parallel.leader import Block
from deeproots.sampling import SamplingParams

pytestmark = pytest.mark.slow  # every test here starts rank processes

SYSTEM = "You are a careful assistant who answers every question in one short, plain sentence. " * 4
QUESTIONS = ["Name a fruit.", "Name a tree.", "Name a river."]


def prompt(model, question: str, system: str = SYSTEM) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return model.tokenize(model.apply_chat_template(messages), add_bos=False, parse_special=True)


def answer(engine: Engine, ids: list[int], namespace: bytes = b"") -> tuple[list, int]:
    """(greedy tokens and logprobs of 12 steps, prompt tokens taken from the prefix cache)."""
    collector = Collector()
    request = GenerationRequest(ids, SamplingParams(temperature=0.0), 12, collector, top_logprobs=0,
                                cache_namespace=namespace)
    engine.submit(request)
    return collector.logprobs(), request.cached_tokens


@pytest.fixture(scope="module")
def single(smollm2_path):
    return deeproots.load(smollm2_path, context=512, threads=1)


@pytest.fixture(scope="module", params=[{"tp": 2}, {"pp": 2}], ids=["tp2", "pp2"])
def parallel(request, smollm2_path):
    model = deeproots.load(smollm2_path, context=512, threads=1, **request.param)
    yield model
    model.close()


def whole_prompt_answers(single, prompts: list[list[int]]) -> list[list]:
    """One process, every prompt run whole (each in a namespace of its own: nothing cached)."""
    engine = Engine(single.loaded, EngineConfig()).start()
    try:
        return [answer(engine, ids, namespace=bytes([index]))[0] for index, ids in enumerate(prompts)]
    finally:
        engine.stop()


def test_a_shared_prefix_is_reused_on_every_rank(single, parallel):
    prompts = [prompt(single, question) for question in QUESTIONS[:2]]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    expected = whole_prompt_answers(single, prompts)
    engine = Engine(parallel.loaded, EngineConfig()).start()
    try:
        first, second = (answer(engine, ids) for ids in prompts)
        stats = engine.stats()
    finally:
        engine.stop()
    assert first == (expected[0], 0)
    tokens, cached = second
    assert shared - 32 < cached <= shared and stats.cached_prompt_tokens == cached  # whole blocks of the prefix
    assert tokens == expected[1]


def test_evictions_from_a_small_cache_keep_every_rank_in_step(single, parallel):
    """Two blocks of room: each system prompt's blocks evict the other's, and a prefix is reused only while kept."""
    other = "You are a terse pirate who answers every question in one short sentence. " * 4
    prompts = [prompt(single, QUESTIONS[0]), prompt(single, QUESTIONS[1], other), prompt(single, QUESTIONS[2], other),
               prompt(single, QUESTIONS[1])]
    expected = whole_prompt_answers(single, prompts)
    engine = Engine(parallel.loaded, EngineConfig(prefix_capacity_tokens=64)).start()
    try:
        results = [answer(engine, ids) for ids in prompts]
        kept = len(engine.prefix_cache.blocks)
    finally:
        engine.stop()
    assert [tokens for tokens, _ in results] == expected
    # the pirate's two blocks evicted the first prompt's, and the last prompt's evicted the pirate's
    assert [cached for _, cached in results] == [0, 0, 64, 0]
    # every evicted block's handle is gone (the other ranks were told to drop their copies): only the kept ones live
    leader = parallel.loaded.backend.leader
    assert sum(isinstance(thing, Block) for thing in list(leader.keys)) == kept == 2
