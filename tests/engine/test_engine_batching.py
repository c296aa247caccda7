"""The engine on the real default model and on tiny mixtures of experts: batched answers equal solo answers, seeds,
prefix cache, constrained output, cancellation, queue, KV budget.

The engine is the same for both: a mixture of experts groups a step's rows by expert, so these check that no
sequence's tokens depend on which others share its step (the logits' bits are checked in tests/models/test_moe.py).
"""

import json
import time

import jsonschema
import pytest
from engine_events import Collector
from test_structured_output import PERSON

import deeproots
from deeproots.engine import Engine, EngineConfig, GenerationRequest, QueueFullError
from deeproots.engine.grammar import GrammarCompiler
from deeproots.engine.scheduler import Scheduler
from deeproots.errors import RequestError
from deeproots.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
QUESTIONS = ["What is the capital of France?", "Write a haiku about roots.", "Name three rivers.",
             "What is 2+2?", "Tell me a joke.", "Who wrote Hamlet?", "Explain gravity briefly.", "List four colors."]


# The tiny MoE checkpoints in q4_0 (packed experts, the fast path): OLMoE's plain experts, Qwen 2 MoE's shared one.
MOE_MODELS = [pytest.param(model_type, marks=pytest.mark.slow) for model_type in ("olmoe", "qwen2_moe")]


@pytest.fixture(scope="module", params=["smollm2", *MOE_MODELS])
def model(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smollm2")
    return deeproots.load(request.getfixturevalue("tiny_q4_0")(request.param))


@pytest.fixture(scope="module")
def engine(model):
    engine = Engine(model.loaded, EngineConfig(max_running=8, max_queue=16)).start()
    yield engine
    engine.stop()


def chat_ids(model, question: str) -> list[int]:
    return model.tokenize(model.apply_chat_template([{"role": "user", "content": question}]),
                          add_bos=False, parse_special=True)


def submit(engine, ids, params=GREEDY, max_tokens=24, **fields) -> Collector:
    collector = Collector()
    engine.submit(GenerationRequest(ids, params, max_tokens, collector, **fields))
    return collector


@pytest.mark.slow  # eight sequences of the real model
def test_greedy_answer_is_identical_alone_and_among_seven_others(engine, model):
    target = chat_ids(model, QUESTIONS[0])
    alone = submit(engine, target, top_logprobs=0)
    alone.wait()  # before any other sequence starts
    others = [submit(engine, chat_ids(model, question)) for question in QUESTIONS[1:4]]
    mid_flight = submit(engine, target, top_logprobs=0)  # joins while the others decode
    others += [submit(engine, chat_ids(model, question)) for question in QUESTIONS[4:]]
    assert mid_flight.logprobs() == alone.logprobs()
    answers = [collector.wait() for collector in others]
    assert all(text for text, _ in answers) and len({text for text, _ in answers}) == len(answers)
    assert alone.wait()[1] in ("stop", "length") and len(alone.wait()[0]) > 10


@pytest.mark.slow  # eight sequences of the real model
def test_seeded_sampling_is_reproducible_under_load(engine, model):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    ids = chat_ids(model, "Invent a name for a cat.")
    first = submit(engine, ids, params).wait()
    crowd = [submit(engine, chat_ids(model, question), SamplingParams(temperature=1.0)) for question in QUESTIONS]
    second = submit(engine, ids, params).wait()
    for collector in crowd:
        collector.wait()
    assert first == second


def test_prefix_cache_reuses_a_shared_prompt(engine, model):
    system = "You are a careful assistant who answers in one short sentence. " * 4
    messages = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]
    ids_a = model.tokenize(model.apply_chat_template(messages("Name a fruit.")), add_bos=False, parse_special=True)
    ids_b = model.tokenize(model.apply_chat_template(messages("Name a tree.")), add_bos=False, parse_special=True)
    before = engine.stats().cached_prompt_tokens
    submit(engine, ids_a, max_tokens=2).wait()
    answer = submit(engine, ids_b, max_tokens=8, top_logprobs=0).logprobs()
    shared = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b)
    reused = engine.stats().cached_prompt_tokens - before
    assert shared - 32 < reused <= shared  # whole blocks of the shared prefix
    # In a namespace of its own nothing is cached: the whole prompt is run, and every token and logprob is the same.
    assert submit(engine, ids_b, max_tokens=8, top_logprobs=0, cache_namespace=b"alone").logprobs() == answer


@pytest.fixture(scope="module")
def person_grammar(model):
    return GrammarCompiler(model.tokenizer, model.config.vocab_size).json_schema(PERSON)


@pytest.mark.slow  # up to 120 tokens of four sequences
@pytest.mark.parametrize("seed", [0, 1])
def test_constrained_answers_validate_while_batched(engine, model, person_grammar, seed):
    """Three sequences under one JSON schema and one unconstrained, decoded together: each answer validates."""
    grammar = person_grammar
    params = SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    free = submit(engine, chat_ids(model, QUESTIONS[1]), max_tokens=40)
    constrained = [submit(engine, chat_ids(model, question), params, max_tokens=120, constraint=grammar.constraint)
                   for question in QUESTIONS[:3]]
    for collector in constrained:
        text, finish = collector.wait()
        assert finish == "stop"
        jsonschema.validate(json.loads(text), PERSON)
    assert free.wait()[0]


def test_cancelled_sequences_free_their_slot_and_kv(engine, model):
    collectors = [Collector() for _ in range(4)]
    requests = [GenerationRequest(chat_ids(model, question), GREEDY, 500, collector)
                for question, collector in zip(QUESTIONS, collectors)]
    for request in requests:
        engine.submit(request)
    while len(collectors[0].events) < 3:
        time.sleep(0.01)
    assert engine.stats().running == 4 and engine.stats().kv_usage > 0
    for request in requests:
        request.cancel()
    deadline = time.time() + 120  # a hang guard, not a speed limit: the loop ends once the slots are free
    while engine.stats().running and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0 and engine.stats().kv_usage == 0.0
    assert all(len(collector.events) < 100 for collector in collectors)


def test_a_prompt_longer_than_the_context_is_refused(engine, model):
    with pytest.raises(RequestError, match="context"):
        engine.submit(GenerationRequest([1] * model.context, GREEDY, 4, Collector()))


def test_scheduler_queue_bound_and_kv_budget():
    scheduler = Scheduler(max_running=4, max_queue=2, kv_budget_tokens=100, context=100)
    make = lambda prompt, max_tokens: GenerationRequest([1] * prompt, GREEDY, max_tokens, lambda event: None)
    big, small = make(50, 30), make(10, 10)
    scheduler.submit(big)
    scheduler.submit(small)
    with pytest.raises(QueueFullError):
        scheduler.submit(make(1, 1))
    assert scheduler.admit() == [big, small] and scheduler.reserved_tokens == 100
    scheduler.submit(make(10, 10))
    assert scheduler.admit() == []  # waits: the budget is spent
    scheduler.release(20)
    assert len(scheduler.admit()) == 1
    with pytest.raises(RequestError):
        Scheduler(max_running=1, max_queue=1, kv_budget_tokens=10, context=100)
