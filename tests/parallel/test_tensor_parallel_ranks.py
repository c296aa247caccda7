"""Tensor parallelism with real ranks (processes on loopback, one kernel thread each) against one process.

"exact" (the default) computes every value as one process does: logits bit-identical, greedy text identical. "sum"
(Megatron's all-reduce) rounds its sums differently; the kernels' int8 activations amplify that, so it is held to the
fast path's own distance from the float32 reference (docs/distributed.md has the numbers).
"""

import json

import jsonschema
import numpy as np
import pytest
from engine_events import Collector

import deeproots
from tiny_checkpoints import ARCHITECTURES
from deeproots.engine import Engine, EngineConfig, GenerationRequest
from deeproots.engine.grammar import GrammarCompiler
from deeproots.sampling import SamplingParams

pytestmark = pytest.mark.slow  # every test here starts rank processes

TEXT = "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of"
QUESTIONS = ["What is the capital of France?", "Write a haiku about roots.", "Name three rivers."]


@pytest.fixture(scope="module")
def single(smollm2_path):
    return deeproots.load(smollm2_path, context=512, threads=1)


@pytest.fixture(scope="module")
def tp2(smollm2_path):
    model = deeproots.load(smollm2_path, context=512, threads=1, tp=2)
    yield model
    model.close()


@pytest.fixture(scope="module", params=[2, 4])
def parallel(request, smollm2_path, tp2):
    if request.param == 2:  # the engine test's ranks too: one start-up fewer
        yield tp2
        return
    model = deeproots.load(smollm2_path, context=512, threads=1, tp=request.param)
    yield model
    model.close()


def test_logits_are_bit_identical_to_one_process(single, parallel):
    ids = single.tokenize(TEXT)
    np.testing.assert_array_equal(parallel.logits(ids), single.logits(ids))


# Tokens decoded after the 37-token prompt. Four ranks on a 2-core machine take ~0.45 s a token (every collective
# waits for all four to be scheduled), so they decode 28 (to position 65); two ranks decode 64.
GREEDY_TOKENS = {2: 64, 4: 28}


def test_greedy_text_is_identical_to_one_process(single, parallel, request):
    tokens = GREEDY_TOKENS[request.node.callspec.params["parallel"]]
    # a story runs the whole greedy length whatever the CPU kernels (a haiku ends after ~22 tokens on AVX2 builds)
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    text = single.chat(messages, max_tokens=tokens, temperature=0)
    assert len(single.tokenize(text)) >= tokens - 4  # not cut short by an end of turn
    assert parallel.chat(messages, max_tokens=tokens, temperature=0) == text


def test_megatron_sum_stays_within_the_fast_paths_own_distance_from_the_reference(smollm2_path, single,
                                                                                  smollm2_reference):
    model = deeproots.load(smollm2_path, context=512, threads=1, tp=2, tp_reduction="sum")
    try:
        ids = single.tokenize(TEXT)
        fast, summed, exact = single.logits(ids), model.logits(ids), smollm2_reference.logits(ids)
    finally:
        model.close()
    own = np.abs(fast - exact).max()  # the int8-activation kernels against float32 numpy
    assert np.abs(summed - fast).max() <= 2 * own
    assert (summed.argmax(-1) == fast.argmax(-1)).mean() >= 0.95


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_the_engine_batches_and_constrains_under_tensor_parallelism(single, tp2):
    """Three sequences decoded together, one under a JSON schema, give the tokens and logprobs one process gives."""
    model = tp2
    grammar = GrammarCompiler(model.tokenizer, model.config.vocab_size).json_schema(SCHEMA)
    results = {}
    for name, loaded in (("single", single.loaded), ("tp", model.loaded)):
        engine = Engine(loaded, EngineConfig(max_running=4, max_queue=8)).start()
        collectors = [Collector() for _ in QUESTIONS]
        for index, (question, collector) in enumerate(zip(QUESTIONS, collectors)):
            ids = model.tokenize(model.apply_chat_template([{"role": "user", "content": question}]),
                                 add_bos=False, parse_special=True)
            engine.submit(GenerationRequest(ids, SamplingParams(temperature=0.0), 48, collector,
                                            constraint=grammar.constraint if index == 0 else None,
                                            top_logprobs=0))
        results[name] = [(collector.wait()[0], collector.logprobs()) for collector in collectors]
        engine.stop()
    jsonschema.validate(json.loads(results["tp"][0][0]), SCHEMA)
    assert results["tp"] == results["single"]


# Every architecture at TP=2 (the mixtures of experts: experts and a shared expert split by hidden units, gpt-oss's
# sinks and expert biases with their heads and units, OLMoE's q/k norms over heads gathered from both ranks), and in
# two pipeline stages Gemma 3 (sliding and global layers, cut between them) and Qwen 2 MoE (experts and a shared
# expert).
TINY_RUNS = [(name, {"tp": 2}) for name in ARCHITECTURES] + [(name, {"pp": 2}) for name in ("gemma3_text", "qwen2_moe")]


@pytest.mark.parametrize("model_type, parallel", TINY_RUNS, ids=[f"{m}-{next(iter(p))}" for m, p in TINY_RUNS])
def test_every_architectures_tiny_checkpoint_gives_one_process_logits_in_parallel(model_type, parallel,
                                                                                  tiny_checkpoint):
    folder, _ = tiny_checkpoint(model_type)
    ids = list(range(1, 24))
    expected = deeproots.load(folder, context=64, threads=1).logits(ids)
    model = deeproots.load(folder, context=64, threads=1, **parallel)
    try:
        np.testing.assert_array_equal(model.logits(ids), expected)
    finally:
        model.close()


@pytest.fixture(scope="module")
def packed_experts(tiny_checkpoint, tmp_path_factory):
    """convert(model_type, quantization) -> path: a tiny mixture of experts with packed 3-d expert tensors."""
    from deeproots.convert import convert_folder

    def convert(model_type: str, quantization: str):
        out = tmp_path_factory.mktemp(f"{model_type}-{quantization}") / "model.gguf"
        convert_folder(tiny_checkpoint(model_type)[0], out, quantization, progress=False)
        return out
    return convert


@pytest.mark.parametrize("model_type, quantization", [("gpt_oss", "mxfp4_moe"), ("olmoe", "q4_0")])
def test_packed_experts_are_sliced_without_requantizing(model_type, quantization, packed_experts):
    """gpt-oss's MXFP4 experts (as it ships) and OLMoE's q4_0 ones, sliced by rows of every expert: the packed
    kernels over each rank's slices give one process's logits bit for bit, and the same greedy tokens."""
    path = packed_experts(model_type, quantization)
    single = deeproots.load(path, context=64, threads=1)
    model = deeproots.load(path, context=64, threads=1, tp=2)
    try:
        ids = list(range(1, 24))
        np.testing.assert_array_equal(model.logits(ids), single.logits(ids))
        assert model.generate(ids, max_tokens=16, temperature=0) == single.generate(ids, max_tokens=16, temperature=0)
    finally:
        model.close()


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen2_moe"])
def test_megatron_sum_over_experts_adds_the_down_bias_once(model_type, tiny_checkpoint):
    """"sum": every expert's down projection cut by input columns and the layer's output all-reduced (gpt-oss's
    down biases added by rank 0 alone; Qwen 2 MoE's shared expert summed with the experts). float32 weights: the
    sums differ from one process's by rounding only."""
    folder, _ = tiny_checkpoint(model_type)
    ids = list(range(1, 24))
    expected = deeproots.load(folder, context=64, threads=1).logits(ids)
    model = deeproots.load(folder, context=64, threads=1, tp=2, tp_reduction="sum")
    try:
        summed = model.logits(ids)
    finally:
        model.close()
    assert np.abs(summed - expected).max() <= 1e-4 * np.abs(expected).max()
    assert (summed.argmax(-1) == expected.argmax(-1)).all()
