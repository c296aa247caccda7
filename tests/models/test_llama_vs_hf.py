"""Our llama against HF transformers on the same GGUF weights, teacher-forced.

The reference path (float32 weights) must match transformers tightly; the fast path (packed weights,
activations quantized per block to int8 as llama.cpp does) must pick the same top token almost everywhere.
"""

from pathlib import Path

import pytest
import torch

# Five texts of different kinds, each long enough for more than 200 positions.
TEXTS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from wine making. " * 8,
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n" * 6,
    "Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs mostly blue and red light, "
    "reflecting green, which is why leaves look green. The Calvin cycle then fixes carbon dioxide into sugars. " * 6,
    "User: What is the capital of France?\nAssistant: The capital of France is Paris.\nUser: And of Italy?\n"
    "Assistant: Rome.\nUser: Name three rivers in Europe.\nAssistant: The Danube, the Rhine and the Seine.\n" * 6,
    "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765; "
    "café, naïve, résumé, 東京, 北京, emoji 🎉🚀, tabs\tand  spaces,   end. " * 8,
]
MIN_POSITIONS = 200


def agreement(model, reference_logits, hf_tokenizer) -> tuple[float, float, float]:
    """(top-1 agreement, max |diff|, mean |diff|) of `model`'s logits against `reference_logits(ids)` over TEXTS."""
    agree = total = 0
    max_diff = diff_sum = 0.0
    for text in TEXTS:
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= MIN_POSITIONS
        ours, reference = model.logits(ids), reference_logits(ids)  # (T, vocab) each
        diff = (ours - reference).abs()
        max_diff = max(max_diff, diff.max().item())
        diff_sum += diff.mean().item() * len(ids)
        agree += (ours.argmax(-1) == reference.argmax(-1)).sum().item()
        total += len(ids)
    print(f"\n{total} positions: top-1 agreement {agree / total:.4f}, max |diff| {max_diff:.2e}, "
          f"mean {diff_sum / total:.2e}")
    return agree / total, max_diff, diff_sum / total


def hf_logits(hf_model):
    def logits(ids):
        with torch.no_grad():
            return hf_model(torch.tensor([ids])).logits[0]
    return logits


def test_reference_path_agrees_with_transformers(smollm2_reference, hf_smollm2):
    hf_tokenizer, hf_model = hf_smollm2
    top1, max_diff, mean_diff = agreement(smollm2_reference, hf_logits(hf_model), hf_tokenizer)
    assert top1 >= 0.99
    assert max_diff < 1e-3
    assert mean_diff < 1e-4


def test_fast_path_agrees_with_reference_path(smollm2, smollm2_reference, hf_smollm2):
    hf_tokenizer, hf_model = hf_smollm2
    top1, _, mean_diff = agreement(smollm2, smollm2_reference.logits, hf_tokenizer)
    assert top1 >= 0.99
    assert mean_diff < 0.3
    top1_hf, _, _ = agreement(smollm2, hf_logits(hf_model), hf_tokenizer)  # reported beside llama.cpp's
    assert top1_hf >= 0.99


def test_incremental_decoding_matches_one_pass(smollm2_reference, hf_smollm2):
    """Prefill then one-token steps through the KV cache give the logits of a single full pass."""
    hf_tokenizer, _ = hf_smollm2
    model = smollm2_reference
    ids = hf_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"][:48]
    full = model.logits(ids)
    cache = model.new_cache(64)
    steps = [model.net.forward(torch.tensor(ids[:37]), cache, all_logits=True)]
    steps += [model.net.forward(torch.tensor([token]), cache, all_logits=True) for token in ids[37:]]
    assert torch.allclose(torch.cat(steps), full, atol=1e-3)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_batched_sequences_match_one_at_a_time(path, request, hf_smollm2):
    """Packing several sequences into one forward pass changes nothing for any of them.

    On the fast path every kernel is row-independent, so the results are bit-identical: a request's
    answer does not depend on what else is in the batch.
    """
    model = request.getfixturevalue("smollm2" if path == "fast" else "smollm2_reference")
    same = torch.equal if path == "fast" else lambda a, b: torch.allclose(a, b, atol=1e-3)
    hf_tokenizer, _ = hf_smollm2
    c = model.config
    prompts = [hf_tokenizer(text, add_special_tokens=False)["input_ids"][:n] for text, n in zip(TEXTS, (9, 30, 17))]
    alone = [model.logits(ids)[-1] for ids in prompts]
    caches = [model.new_cache(64) for _ in prompts]
    packed = model.net.forward_batch(torch.tensor(sum(prompts, [])), caches, [len(p) for p in prompts])
    assert packed.shape == (3, c.vocab_size)
    for row, reference in zip(packed, alone):
        assert same(row, reference)
    # A decode step for all three at their different positions, against each one's own decode step.
    step = model.net.forward_batch(torch.tensor([5, 6, 7]), caches, [1, 1, 1])
    for row, ids, token in zip(step, prompts, (5, 6, 7)):
        own = model.new_cache(64)
        model.net.forward(torch.tensor(ids), own)
        assert same(row, model.net.forward(torch.tensor([token]), own)[0])


def test_float16_kv_cache_costs_under_one_percent_of_perplexity(smollm2_path, smollm2):
    """The default float16 cache against a float32 one on the fast path, by perplexity over real text."""
    import deeproots
    from deeproots.perplexity import chunk_nlls, summarize

    text = Path("/usr/share/common-licenses/GPL-3").read_text()[:20000]
    f32 = deeproots.load(smollm2_path, context=2048, kv_type="f32")
    assert smollm2.kv_dtype == torch.float16 and f32.kv_dtype == torch.float32
    half, full = (summarize(list(chunk_nlls(model, text, 256))).perplexity for model in (smollm2, f32))
    print(f"\nperplexity with a float16 KV cache {half:.4f}, float32 {full:.4f}")
    assert half == pytest.approx(full, rel=0.01)
