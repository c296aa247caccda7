"""Sampling: filters against HF transformers' logits warpers; seeds; penalties; parameter validation.

Our code takes numpy arrays; the transformers references take torch tensors (converted at the boundary)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from deeproots.errors import RequestError
from deeproots.sampling import SamplingParams, apply_penalties, filter_logits, make_sampler

transformers = pytest.importorskip("transformers")


def hf_filter(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    scores = torch.from_numpy(logits[None].copy())
    if top_k > 0:
        scores = transformers.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = transformers.TopPLogitsWarper(top_p)(None, scores)
    if min_p > 0.0:
        scores = transformers.MinPLogitsWarper(min_p)(None, scores)
    return scores[0].numpy()


@pytest.mark.slow  # transformers
@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(2, 300), top_k=st.integers(0, 50),
       top_p=st.sampled_from([1.0, 0.99, 0.9, 0.5, 0.1]), min_p=st.sampled_from([0.0, 0.01, 0.05, 0.3]))
def test_filters_keep_the_same_tokens_as_transformers(seed, vocab, top_k, top_p, min_p):
    logits = np.random.default_rng(seed).standard_normal(vocab, dtype=np.float32) * 3
    ours = filter_logits(logits.copy(), top_k, top_p, min_p)
    reference = hf_filter(logits, top_k, top_p, min_p)
    assert np.array_equal(np.isfinite(ours), np.isfinite(reference))
    assert np.array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


def test_repeat_penalty_matches_transformers_over_the_window():
    logits = np.random.default_rng(0).standard_normal(100, dtype=np.float32) * 4
    history = [3, 7, 7, 50, 99]
    ours = apply_penalties(logits, history, SamplingParams(repeat_penalty=1.3))
    reference = transformers.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]),
                                                                   torch.from_numpy(logits[None].copy()))[0]
    assert np.allclose(ours, reference.numpy())


def test_presence_and_frequency_penalties_follow_openai():
    logits = np.zeros(10, dtype=np.float32)
    out = apply_penalties(logits, [1, 1, 1, 4], SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    # OpenAI: logit - count * frequency_penalty - (count > 0) * presence_penalty
    expected = np.zeros(10, dtype=np.float32)
    expected[1] = -(3 * 0.25) - 0.5
    expected[4] = -(1 * 0.25) - 0.5
    assert np.allclose(out, expected)


def test_greedy_is_argmax_and_seed_reproduces_samples():
    logits = np.random.default_rng(1).standard_normal(1000, dtype=np.float32)
    assert make_sampler(SamplingParams(temperature=0))(logits, []) == int(logits.argmax())
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    draws_a, draws_b = make_sampler(params), make_sampler(params)
    a = [draws_a(logits, []) for _ in range(50)]
    b = [draws_b(logits, []) for _ in range(50)]
    assert a == b
    assert len(set(a)) > 5  # a real distribution over 1000 tokens, not a constant


@pytest.mark.parametrize("temperature", [1e-38, 1e-40, 1e-45, 1e-300])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    # logits / 1e-38 overflows float32 (and 1e-46 rounds to 0 in it): such a row has no distribution to draw from
    logits = np.random.default_rng(3).standard_normal(1000, dtype=np.float32) * 10
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0, seed=5)
    filtered = SamplingParams(temperature=temperature, top_k=40, top_p=0.9, min_p=0.05, seed=5)
    for settings_ in (params, filtered):
        sample = make_sampler(settings_)
        assert [sample(logits, []) for _ in range(5)] == [int(logits.argmax())] * 5


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    sample = make_sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    counts = np.bincount([sample(logits, []) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.7, 0.2, 0.1], atol=0.03)


def test_logit_bias_can_force_a_token():
    logits = np.zeros(20, dtype=np.float32)
    assert make_sampler(SamplingParams(temperature=0, logit_bias={13: 5.0}))(logits, []) == 13
    with pytest.raises(RequestError, match="outside the vocabulary"):
        make_sampler(SamplingParams(temperature=0, logit_bias={25: 1.0}))(logits, [])


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5),
    ("min_p", -0.2), ("repeat_penalty", 0.0), ("presence_penalty", 3.0), ("frequency_penalty", -2.5),
    ("temperature", "hot"), ("logit_bias", {-1: 1.0}), ("logit_bias", {5: 1000.0}),
])
def test_invalid_sampling_values_are_rejected(field, value):
    with pytest.raises(RequestError, match=field.split("_")[0]):
        SamplingParams(**{field: value})
