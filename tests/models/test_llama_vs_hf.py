"""Our llama against HF transformers on the same GGUF weights, teacher-forced."""

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


def test_logits_agree_with_transformers(smollm2, hf_smollm2):
    hf_tokenizer, hf_model = hf_smollm2
    agree = total = 0
    max_diff = mean_diff_sum = 0.0
    for text in TEXTS:
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= MIN_POSITIONS
        ours = smollm2.logits(ids)  # (T, vocab)
        with torch.no_grad():
            reference = hf_model(torch.tensor([ids])).logits[0]
        diff = (ours - reference).abs()
        max_diff = max(max_diff, diff.max().item())
        mean_diff_sum += diff.mean().item() * len(ids)
        agree += (ours.argmax(-1) == reference.argmax(-1)).sum().item()
        total += len(ids)
    mean_diff = mean_diff_sum / total
    print(f"\n{total} positions: top-1 agreement {agree / total:.4f}, max |diff| {max_diff:.2e}, mean {mean_diff:.2e}")
    assert agree / total >= 0.99
    assert max_diff < 1e-3
    assert mean_diff < 1e-4


def test_incremental_decoding_matches_one_pass(smollm2, hf_smollm2):
    """Prefill then one-token steps through the KV cache give the logits of a single full pass."""
    from deeproots.cache.kv import KVCache

    hf_tokenizer, _ = hf_smollm2
    ids = hf_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"][:48]
    full = smollm2.logits(ids)
    c = smollm2.config
    cache = KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 64)
    steps = [smollm2.net.forward(torch.tensor(ids[:40]), cache, all_logits=True)]
    steps += [smollm2.net.forward(torch.tensor([token]), cache, all_logits=True) for token in ids[40:]]
    assert torch.allclose(torch.cat(steps), full, atol=1e-3)


def test_batched_sequences_match_one_at_a_time(smollm2, hf_smollm2):
    """Packing several sequences into one forward pass changes nothing for any of them."""
    from deeproots.cache.kv import KVCache

    hf_tokenizer, _ = hf_smollm2
    c = smollm2.config
    prompts = [hf_tokenizer(text, add_special_tokens=False)["input_ids"][:n] for text, n in zip(TEXTS, (9, 30, 17))]
    alone = [smollm2.logits(ids)[-1] for ids in prompts]
    caches = [KVCache(c.n_layers, c.n_kv_heads, c.head_dim, 64) for _ in prompts]
    packed = smollm2.net.forward_batch(torch.tensor(sum(prompts, [])), caches, [len(p) for p in prompts])
    assert packed.shape == (3, c.vocab_size)
    for row, reference in zip(packed, alone):
        assert torch.allclose(row, reference, atol=1e-3)
    # A decode step for all three at their different positions.
    step = smollm2.net.forward_batch(torch.tensor([5, 6, 7]), caches, [1, 1, 1])
    for row, ids, token in zip(step, prompts, (5, 6, 7)):
        assert torch.allclose(row, smollm2.logits(ids + [token])[-1], atol=1e-3)
