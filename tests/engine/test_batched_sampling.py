"""The engine's batched sampling against sampling each sequence alone: the same tokens for the same seeds/params."""

import numpy as np
import pytest

from deeproots.errors import RequestError
from deeproots.generate import SequenceDecoder, decode_batch
from deeproots.sampling import SamplingParams, filter_logits, make_sampler, sample_batch

# Every path of draw_batch: greedy rows, plain temperature, each filter alone and together (rows sharing filters
# and rows with filters of their own), penalties, logit bias; seeds differ per row.
PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=1),
    SamplingParams(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0, seed=2),
    SamplingParams(temperature=1.3, top_k=40, top_p=1.0, min_p=0.0, seed=3),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=4),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, seed=5),
    SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=6),  # the CLI's defaults
    SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=7),
    SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.3, presence_penalty=0.5,
                   frequency_penalty=0.25, seed=8),
    SamplingParams(temperature=0.0, repeat_penalty=1.5, logit_bias={3: 2.0, 7: -100.0}),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, logit_bias={5: 3.0}, seed=9),
]


@pytest.mark.parametrize("vocab", [49152, 1001])
def test_batched_draws_equal_per_sequence_draws(vocab):
    generator = np.random.default_rng(vocab)
    batched = [make_sampler(params) for params in PARAMS]
    alone = [make_sampler(params) for params in PARAMS]
    histories = [[1, 2, 3, 3, 9] for _ in PARAMS]
    masked = 4  # this row is constrained to the even tokens
    allowed = [None] * len(PARAMS)
    allowed[masked] = np.arange(vocab) % 2 == 0
    seen = [set() for _ in PARAMS]
    for _ in range(25):
        logits = generator.standard_normal((len(PARAMS), vocab), dtype=np.float32) * 4
        tokens = sample_batch(logits, batched, histories, allowed)
        assert tokens == [sampler(row, history, mask) for sampler, row, history, mask
                          in zip(alone, logits, histories, allowed)]
        for history, token, kept in zip(histories, tokens, seen):
            history.append(token)
            kept.add(token)
    assert all(token % 2 == 0 for token in histories[masked][5:])
    assert len(seen[1]) > 10 and len(seen[0]) > 10  # sampled rows vary; greedy follows the random logits


def test_a_row_gets_the_same_tokens_in_any_batch():
    """The same sequence alone, first, in the middle or last, among different neighbours: the same draws."""
    generator = np.random.default_rng(0)
    params = SamplingParams(temperature=0.8, top_k=0, top_p=0.9, min_p=0.0, seed=42)
    own = [generator.standard_normal(3000, dtype=np.float32) * 3 for _ in range(20)]  # the sequence's logits, step by step
    runs = []
    for row in (0, 2, 5):
        samplers = [make_sampler(SamplingParams(temperature=0.5 + 0.1 * i, top_k=10 * i, seed=i)) for i in range(6)]
        samplers[row] = make_sampler(params)
        run = []
        for logits in own:
            batch = generator.standard_normal((6, 3000), dtype=np.float32) * 3
            batch[row] = logits
            run.append(sample_batch(batch, samplers, [[]] * 6, [None] * 6)[row])
        runs.append(run)
    alone = make_sampler(params)
    runs.append([alone(logits, []) for logits in own])
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert len(set(runs[0])) > 3


@pytest.mark.parametrize("top_k, top_p, min_p", [(40, 0.95, 0.05), (0, 0.9, 0.0), (5, 1.0, 0.0), (0, 1.0, 0.1)])
def test_a_draw_is_the_inverse_cdf_over_the_whole_filtered_row(top_k, top_p, min_p):
    """draw_batch draws among the filters' few candidates; the token must be the one the float64 cumulative sum
    over the whole vocabulary picks for the same uniform (a twin generator with the same seed)."""
    logits_rng = np.random.default_rng(5)
    params = SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p, seed=11)
    sampler, twin = make_sampler(params), np.random.Generator(np.random.PCG64(11))
    for _ in range(100):
        logits = logits_rng.standard_normal(5000, dtype=np.float32) * 3
        filtered = filter_logits(logits / np.float32(0.8), top_k, top_p, min_p)
        cdf = np.cumsum(np.exp(filtered - filtered.max()), dtype=np.float64)
        assert sampler(logits, []) == int(np.searchsorted(cdf, twin.random() * cdf[-1], side="right"))


def softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def sort_filter(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The previous implementation: a full sort of the vocabulary, one row (the reference here)."""
    order = np.argsort(-logits, kind="stable")
    sorted_logits = logits[order]
    if top_k > 0:
        sorted_logits[top_k:] = -np.inf
    if top_p < 1.0:
        probs = softmax(sorted_logits)
        mass_before = probs.cumsum() - probs
        sorted_logits[1:][mass_before[1:] >= top_p] = -np.inf
    if min_p > 0.0:
        probs = softmax(sorted_logits)
        sorted_logits[probs < min_p * probs[0]] = -np.inf
    out = np.empty_like(logits)
    out[order] = sorted_logits
    return out


@pytest.mark.parametrize("top_k, top_p, min_p", [(40, 1.0, 0.0), (0, 0.9, 0.0), (0, 0.999, 0.0), (0, 1.0, 0.05),
                                                  (40, 0.95, 0.05), (5000, 0.5, 0.0), (0, 0.7, 0.01)])
def test_batched_filters_keep_what_the_sorting_filter_kept(top_k, top_p, min_p):
    # scale 0.5: flat distributions whose nucleus needs thousands of candidates (the top-k that grows)
    for scale in (0.5, 3.0):
        logits = np.random.default_rng(top_k).standard_normal((4, 49152), dtype=np.float32) * scale
        batch = filter_logits(logits, top_k, top_p, min_p)
        for row in range(4):
            # In float64: in float32 the cumulative mass at the nucleus' edge of a long tail (top_p = 0.999, tokens
            # of ~1e-7 each) is off by ~1e-6, a dozen tokens either way; filter_logits computes it in float64.
            reference = sort_filter(logits[row].astype(np.float64), top_k, top_p, min_p)
            differ = np.isfinite(batch[row]) != np.isfinite(reference)
            assert float(softmax(logits[row])[differ].sum()) < 1e-6
            assert np.array_equal(batch[row], filter_logits(logits[row], top_k, top_p, min_p))
        assert np.array_equal(batch[np.isfinite(batch)], logits[np.isfinite(batch)])


def test_decode_batch_equals_each_decoder_alone(smollm2):
    tokenizer, vocab = smollm2.tokenizer, smollm2.config.vocab_size
    prompt = smollm2.tokenize("Once upon a time")
    make = lambda params, **options: SequenceDecoder(tokenizer, prompt, params, max_tokens=12, **options)
    specs = [(params, {"top_logprobs": 3 if index % 3 == 0 else None}) for index, params in enumerate(PARAMS[:8])]
    specs.append((SamplingParams(temperature=0, logit_bias={vocab + 5: 1.0}), {}))  # fails: outside the vocabulary
    batched = [make(params, **options) for params, options in specs]
    alone = [make(params, **options) for params, options in specs]
    generator = np.random.default_rng(3)
    for _ in range(12):
        logits = generator.standard_normal((len(specs), vocab), dtype=np.float32) * 4
        results = decode_batch(batched, logits, [100] * len(specs))
        assert isinstance(results[-1], RequestError)
        with pytest.raises(RequestError, match="outside the vocabulary"):
            alone[-1].step(logits[-1], 100)
        for decoder, row, result in zip(alone[:-1], logits, results):
            assert result == decoder.step(row, 100)
        assert results[0].logprob is not None and len(results[0].logprob.top) == 3 and results[1].logprob is None
