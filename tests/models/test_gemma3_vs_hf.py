"""Gemma 3 270M against HF transformers on the same GGUF weights: logits and greedy text.

The same figures as the llama tests: the reference path matches transformers tightly, the fast path
(int8 activations per block, Q5_0 weights on their own kernel) picks the same top token almost everywhere.
One text is longer than the 512-token sliding window, so the local layers' windows are exercised.
(Transformers takes ~20 s to load this model: its 262k-token vocabulary.)
"""

import pytest
import torch
from hf_agreement import TEXTS, agreements, hf_logits

import deeproots

pytestmark = pytest.mark.slow  # transformers' Gemma 3 (~20 s to load)

PROMPT = "The three primary colors are"
GREEDY_TOKENS = 32


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_path):
    return deeproots.load(gemma3_path, context=2048, reference=True)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return deeproots.load(gemma3_path, context=2048)


def test_logits_agree_with_transformers(gemma3_reference, gemma3, hf_gemma3):
    hf_tokenizer, hf_model = hf_gemma3
    # The first text is longer than the sliding window, so local layers drop their oldest keys.
    # Two texts (prose + code, then numbers and non-Latin scripts): each costs transformers seconds over 262k logits.
    texts = [TEXTS[0] + " " + TEXTS[1], TEXTS[4]]
    assert len(hf_tokenizer(texts[0])["input_ids"]) > gemma3.config.sliding_window
    reference, fast = agreements([gemma3_reference, gemma3], hf_logits(hf_model), hf_tokenizer, texts)
    top1, max_diff, mean_diff = reference
    assert top1 >= 0.99
    # Measured 1.2e-3: Gemma's residual stream is far larger (norm weights up to ~280), so float32 rounding
    # differences grow with it; the mean stays at 1.5e-5.
    assert max_diff < 2e-3
    assert mean_diff < 1e-4
    top1, _, mean_diff = fast
    assert top1 >= 0.98
    assert mean_diff < 0.5


def test_greedy_text_matches_transformers(gemma3_reference, hf_gemma3):
    hf_tokenizer, hf_model = hf_gemma3
    ids = hf_tokenizer(PROMPT)["input_ids"]
    assert gemma3_reference.tokenize(PROMPT) == ids
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long))[0, len(ids):]
    ours = gemma3_reference.generate(PROMPT, max_tokens=GREEDY_TOKENS, temperature=0)
    print(f"\ngreedy: {ours!r}")
    assert ours == hf_tokenizer.decode(expected, skip_special_tokens=True)
