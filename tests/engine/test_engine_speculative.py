"""Speculative decoding in the engine on the real default model: batched greedy answers with drafts equal the
plain engine's token for token (constrained ones too), drafts stop when the batch is full, sampled constrained
output still validates, and a draft model (a Q4_0 requantization drafting for a Q8_0 one) changes nothing."""

from __future__ import annotations

import json

import jsonschema
import pytest
from engine_events import Collector as EventCollector

import deeproots
from deeproots.convert import quantize_file
from deeproots.draft import VocabularyMismatchError
from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.engine.grammar import GrammarCompiler
from deeproots.sampling import SamplingParams
from deeproots.speculative import SpeculationConfig

GREEDY = SamplingParams(temperature=0.0)
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "maxLength": 40}},
          "required": ["name", "age", "city"], "additionalProperties": False}
CARD = "Name: Ada Lovelace. Age: 36. City: London. Name: Ada Lovelace. Age: 36. City: London."
PROMPTS = [f"Copy this line exactly: {CARD}", "Write one sentence about the sea.",
           f"Give the person on this card as JSON: {CARD}"]
LOOKUP = SpeculationConfig("lookup", 6, adaptive=False)


class Collector(EventCollector):
    def ids(self) -> list[int]:
        assert self.done.wait(300), "the engine did not finish the request in time"
        if isinstance(self.events[-1], Exception):
            raise self.events[-1]
        return [step.token_id for step in self.events]


def run_all(model, config: EngineConfig, prompts=PROMPTS, params=GREEDY, constrained=(2,), max_tokens=48):
    """Every prompt submitted at once; returns their token ids and their requests."""
    compiler = GrammarCompiler(model.tokenizer, model.config.vocab_size)
    engine = Engine(model.loaded, config).start()
    try:
        requests, collectors = [], []
        for index, prompt in enumerate(prompts):
            collector = Collector()
            ids = model.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
            constraint = compiler.json_schema(PERSON).constraint if index in constrained else None
            requests.append(GenerationRequest(ids, params, max_tokens, collector, constraint=constraint))
            collectors.append(collector)
            engine.submit(requests[-1])
        return [collector.ids() for collector in collectors], requests
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def plain_answers(smollm2):
    return run_all(smollm2, EngineConfig())[0]


@pytest.mark.slow
def test_batched_greedy_with_drafts_is_identical_to_plain(smollm2, plain_answers):
    answers, requests = run_all(smollm2, EngineConfig(speculation=LOOKUP))
    assert answers == plain_answers
    assert requests[0].accepted_draft_tokens > 0  # the copied line was drafted and kept
    assert requests[2].accepted_draft_tokens > 0  # drafts under a JSON schema too


@pytest.mark.slow
def test_adaptive_drafts_are_identical_too(smollm2, plain_answers):
    answers, requests = run_all(smollm2, EngineConfig(speculation=SpeculationConfig("lookup")))
    assert answers == plain_answers


@pytest.mark.slow
def test_no_drafts_while_the_batch_is_full(smollm2, plain_answers):
    """Three sequences that all run to max_tokens together: with three slots they fill the batch all along."""
    full, full_requests = run_all(smollm2, EngineConfig(max_running=3, speculation=LOOKUP), max_tokens=12)
    roomy, roomy_requests = run_all(smollm2, EngineConfig(max_running=4, speculation=LOOKUP), max_tokens=12)
    assert full == roomy == [answer[:12] for answer in plain_answers]
    assert all(r.accepted_draft_tokens == r.rejected_draft_tokens == 0 for r in full_requests)
    assert sum(r.accepted_draft_tokens + r.rejected_draft_tokens for r in roomy_requests) > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_constrained_output_with_drafts_validates(smollm2, seed):
    params = SamplingParams(temperature=1.0, seed=seed)
    answers, requests = run_all(smollm2, EngineConfig(speculation=LOOKUP), prompts=PROMPTS[2:], params=params,
                                constrained=(0,), max_tokens=120)
    text = smollm2.detokenize([t for t in answers[0] if t not in smollm2.tokenizer.stop_ids])
    jsonschema.validate(json.loads(text), PERSON)
    assert requests[0].accepted_draft_tokens + requests[0].rejected_draft_tokens > 0


@pytest.fixture(scope="module")
def q8_and_q4(smollm2_path, tmp_path_factory):
    """The default model requantized: Q8_0 (the model) and Q4_0 (its draft), same vocabulary."""
    folder = tmp_path_factory.mktemp("draft")
    quantize_file(smollm2_path, folder / "q8_0.gguf", "q8_0")
    quantize_file(smollm2_path, folder / "q4_0.gguf", "q4_0")
    return folder / "q8_0.gguf", folder / "q4_0.gguf"


@pytest.mark.slow
def test_a_draft_model_changes_no_token(q8_and_q4):
    target_path, draft_path = q8_and_q4
    target = deeproots.load(target_path, context=1024)
    plain = run_all(target, EngineConfig())[0]
    for draft_max in (1, 4, 8):
        config = EngineConfig(speculation=SpeculationConfig("draft", draft_max, adaptive=False),
                              draft_model=draft_path)
        answers, requests = run_all(target, config)
        assert answers == plain, f"draft_max={draft_max}"
        assert sum(r.accepted_draft_tokens for r in requests) > 0


@pytest.mark.slow
def test_a_draft_model_through_the_api_is_identical(q8_and_q4):
    target_path, draft_path = q8_and_q4
    plain = deeproots.load(target_path, context=1024)
    drafted = deeproots.load(target_path, context=1024, speculation="draft", draft_model=draft_path, draft_max=5)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    assert drafted.chat(messages, max_tokens=48, temperature=0.0) == plain.chat(messages, max_tokens=48,
                                                                                temperature=0.0)
    assert drafted.speculator.accepted > 0


@pytest.mark.slow
def test_a_draft_model_of_another_vocabulary_is_refused_naming_both(smollm2_path, gemma3_path):
    with pytest.raises(VocabularyMismatchError) as raised:
        deeproots.load(smollm2_path, context=256, speculation="draft", draft_model=gemma3_path)
    assert str(gemma3_path) in str(raised.value) and str(smollm2_path) in str(raised.value)


@pytest.mark.slow
def test_a_draft_model_when_sampling_verifies_its_drafts(q8_and_q4):
    target_path, draft_path = q8_and_q4
    target = deeproots.load(target_path, context=1024)
    config = EngineConfig(speculation=SpeculationConfig("draft", 4, adaptive=False), draft_model=draft_path)
    answers, requests = run_all(target, config, prompts=PROMPTS[:2], params=SamplingParams(temperature=0.8, seed=3),
                                constrained=(), max_tokens=32)
    assert all(answers) and sum(r.accepted_draft_tokens for r in requests) > 0
