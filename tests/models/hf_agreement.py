"""Teacher-forced logit agreement between one of our models and a reference, over texts of five kinds."""

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


def agreement(model, reference_logits, hf_tokenizer, texts=TEXTS) -> tuple[float, float, float]:
    """(top-1 agreement, max |diff|, mean |diff|) of `model`'s logits against `reference_logits(ids)` over texts."""
    return agreements([model], reference_logits, hf_tokenizer, texts)[0]


def agreements(models, reference_logits, hf_tokenizer, texts=TEXTS) -> list[tuple[float, float, float]]:
    """`agreement` for several models, computing each text's reference logits once."""
    agree, max_diff, diff_sum = [0] * len(models), [0.0] * len(models), [0.0] * len(models)
    total = 0
    for text in texts:
        ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) >= MIN_POSITIONS
        reference = torch.as_tensor(reference_logits(ids))  # (T, vocab); ours are numpy arrays, HF's tensors
        reference_top = reference.argmax(-1)
        for i, model in enumerate(models):
            ours = torch.from_numpy(model.logits(ids))  # (T, vocab)
            agree[i] += (ours.argmax(-1) == reference_top).sum().item()
            diff = (ours - reference).abs_()  # one copy, not two: with a 262k vocabulary each is ~1 GB
            max_diff[i] = max(max_diff[i], diff.max().item())
            diff_sum[i] += diff.mean().item() * len(ids)
        total += len(ids)
    results = [(a / total, m, d / total) for a, m, d in zip(agree, max_diff, diff_sum)]
    for top1, most, mean in results:
        print(f"\n{total} positions: top-1 agreement {top1:.4f}, max |diff| {most:.2e}, mean {mean:.2e}")
    return results


def hf_logits(hf_model):
    def logits(ids):
        with torch.no_grad():
            return hf_model(torch.tensor([ids])).logits[0]
    return logits
