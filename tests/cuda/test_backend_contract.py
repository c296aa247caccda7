"""The backend seam's contract: the same tiny checkpoint of every architecture but gpt-oss (tests/tiny_checkpoints.py),
converted to Q8_0 GGUF, through the reference backend, the CPU backend and the CUDA backend (its Triton kernels,
under the interpreter without a GPU), logits within bounds of the reference's.

The text is longer than the sliding windows (Mistral's, Gemma 3's), and after the prefill two tokens are decoded
one at a time, so both attention paths (SDPA for prefill, the Triton decode kernel) and the f16 device KV cache
are exercised. Bounds (max |diff| of logits of size ~1, top-1 agreement): the CUDA backend multiplies in float32
over the same dequantized weights, so only f16 KV rounding and summation order differ: 5e-3. The CPU backend
quantizes activations to 8 bits per block, as llama.cpp does: 0.2, the bound of a q8_0 conversion.
"""

import numpy as np
import pytest
from tiny_checkpoints import ARCHITECTURES

from deeproots.errors import UnsupportedModelError
from deeproots.loader import load_model_file

pytestmark = pytest.mark.slow  # transformers checkpoints, converted, and the interpreter over 30 k-token projections

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs."
PLACED = sorted(set(ARCHITECTURES) - {"gpt_oss"})  # dense and mixtures of experts; gpt-oss is refused by name
BOUNDS = {"cpu": (0.2, 0.85), "cuda": (5e-3, 0.95)}  # backend -> (max |diff|, top-1 agreement)
DECODED = 2


def logits_of(loaded, ids: np.ndarray) -> np.ndarray:
    """All logits of `ids`: a prefill of all but the last DECODED tokens, then those one at a time."""
    cache = loaded.new_cache(len(ids))
    prefill = loaded.net.forward(ids[:-DECODED], cache, all_logits=True)
    steps = [loaded.net.forward(ids[i:i + 1], cache) for i in range(len(ids) - DECODED, len(ids))]
    return np.concatenate([prefill, *steps])  # (T, vocab)


@pytest.mark.parametrize("model_type", PLACED)
def test_cuda_backend_matches_reference(model_type, q8_0_file, device):
    path = q8_0_file(model_type)
    reference = load_model_file(path, backend="reference")
    ids = np.asarray(reference.tokenizer.encode(TEXT), dtype=np.int64)
    assert len(ids) > 2 * 5  # longer than twice the windows
    expected = reference.net.forward(ids, reference.new_cache(len(ids)), all_logits=True)
    for backend, (diff_bound, top1_bound) in BOUNDS.items():
        ours = logits_of(load_model_file(path, backend=backend, device=device), ids)
        max_diff, top1 = np.abs(ours - expected).max(), (ours.argmax(-1) == expected.argmax(-1)).mean()
        print(f"\n{model_type} {backend}: max |diff| {max_diff:.2e}, top-1 {top1:.3f}")
        assert max_diff < diff_bound, backend
        assert top1 >= top1_bound, backend


def test_gpt_oss_experts_are_refused_by_name(tiny_checkpoint, device):
    folder, _ = tiny_checkpoint("gpt_oss")
    with pytest.raises(UnsupportedModelError, match="GptOssExperts"):
        load_model_file(folder, backend="cuda", device=device)


def test_q8_0_kv_cache_on_device_matches_reference(q8_0_file, device):
    """Qwen 3's 32-value heads fit Q8_0 blocks: both backends store keys and values as q8_0 rows. A key that lands
    within float32 rounding of a half step can round to the next int8 (1/254 of its block's largest value), so the
    bound is 2e-2, not the f16 cache's 5e-3."""
    path = q8_0_file("qwen3")
    reference = load_model_file(path, backend="reference", kv_type="q8_0")
    ids = np.asarray(reference.tokenizer.encode(TEXT), dtype=np.int64)
    expected = reference.net.forward(ids, reference.new_cache(len(ids)), all_logits=True)
    ours = logits_of(load_model_file(path, backend="cuda", device=device, kv_type="q8_0"), ids)
    print(f"\nqwen3 cuda q8_0 KV: max |diff| {np.abs(ours - expected).max():.2e}")
    assert np.abs(ours - expected).max() < 2e-2
    assert (ours.argmax(-1) == expected.argmax(-1)).mean() >= 0.95
