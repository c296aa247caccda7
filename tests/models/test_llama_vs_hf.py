"""Our llama against HF transformers on the same GGUF weights, teacher-forced.

The reference path (float32 weights) must match transformers tightly; the fast path (packed weights,
activations quantized per block to int8 as llama.cpp does) must pick the same top token almost everywhere.
"""

from pathlib import Path

import numpy as np
import pytest
from hf_agreement import TEXTS, agreement, hf_logits

pytestmark = pytest.mark.slow  # transformers on the default model, thousands of positions


class Memo:
    """A model's logits per token sequence, computed once for this module's tests (each text costs seconds)."""

    def __init__(self, logits):
        self._logits, self._seen = logits, {}

    def logits(self, ids):
        key = tuple(ids)
        if key not in self._seen:
            self._seen[key] = self._logits(ids)
        return self._seen[key]


@pytest.fixture(scope="module")
def reference_path(smollm2_reference):
    return Memo(smollm2_reference.logits)


@pytest.fixture(scope="module")
def transformers_logits(hf_smollm2):
    return Memo(hf_logits(hf_smollm2[1])).logits


def test_reference_path_agrees_with_transformers(reference_path, transformers_logits, hf_smollm2):
    hf_tokenizer, _ = hf_smollm2
    top1, max_diff, mean_diff = agreement(reference_path, transformers_logits, hf_tokenizer)
    assert top1 >= 0.99
    assert max_diff < 1e-3
    assert mean_diff < 1e-4


def test_fast_path_agrees_with_reference_path(smollm2, reference_path, transformers_logits, hf_smollm2):
    hf_tokenizer, _ = hf_smollm2
    top1, _, mean_diff = agreement(smollm2, reference_path.logits, hf_tokenizer)
    assert top1 >= 0.99
    assert mean_diff < 0.3
    top1_hf, _, _ = agreement(smollm2, transformers_logits, hf_tokenizer)  # reported beside llama.cpp's
    assert top1_hf >= 0.99


def test_incremental_decoding_matches_one_pass(smollm2_reference, hf_smollm2):
    """Prefill then one-token steps through the KV cache give the logits of a single full pass."""
    hf_tokenizer, _ = hf_smollm2
    model = smollm2_reference
    ids = hf_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"][:48]
    full = model.logits(ids)
    cache = model.new_cache(64)
    steps = [model.net.forward(np.array(ids[:37]), cache, all_logits=True)]
    steps += [model.net.forward(np.array([token]), cache, all_logits=True) for token in ids[37:]]
    np.testing.assert_allclose(np.concatenate(steps), full, atol=1e-3, rtol=0)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_batched_sequences_match_one_at_a_time(path, request, hf_smollm2):
    """Packing several sequences into one forward pass changes nothing for any of them.

    On the fast path every kernel is row-independent, so the results are bit-identical: a request's
    answer does not depend on what else is in the batch.
    """
    model = request.getfixturevalue("smollm2" if path == "fast" else "smollm2_reference")
    same = np.array_equal if path == "fast" else lambda a, b: np.allclose(a, b, atol=1e-3, rtol=0)
    hf_tokenizer, _ = hf_smollm2
    c = model.config
    prompts = [hf_tokenizer(text, add_special_tokens=False)["input_ids"][:n] for text, n in zip(TEXTS, (9, 30, 17))]
    alone = [model.logits(ids)[-1] for ids in prompts]
    caches = [model.new_cache(64) for _ in prompts]
    packed = model.net.forward_batch(np.array(sum(prompts, [])), caches, [len(p) for p in prompts])
    assert packed.shape == (3, c.vocab_size)
    for row, reference in zip(packed, alone):
        assert same(row, reference)
    # A decode step for all three at their different positions, against each one's own decode step.
    step = model.net.forward_batch(np.array([5, 6, 7]), caches, [1, 1, 1])
    for row, ids, token in zip(step, prompts, (5, 6, 7)):
        own = model.new_cache(64)
        model.net.forward(np.array(ids), own)
        assert same(row, model.net.forward(np.array([token]), own)[0])


def test_float16_kv_cache_costs_under_one_percent_of_perplexity(smollm2_path, smollm2):
    """The default float16 cache against a float32 one on the fast path, by perplexity over real text."""
    import deeproots
    from deeproots.perplexity import chunk_nlls, summarize

    text = Path("/usr/share/common-licenses/GPL-3").read_text()[:20000]
    f32 = deeproots.load(smollm2_path, context=2048, kv_type="f32")
    assert smollm2.kv_type == "f16" and f32.kv_type == "f32"
    half, full = (summarize(list(chunk_nlls(model, text, 256))).perplexity for model in (smollm2, f32))
    print(f"\nperplexity with a float16 KV cache {half:.4f}, float32 {full:.4f}")
    assert half == pytest.approx(full, rel=0.01)
