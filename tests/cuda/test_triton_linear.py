"""The fused dequantize + product kernels (kernels/triton/linear.py) against the float64 reference product over the
numpy dequantizers (which tests/quant checks against the gguf package), on random blocks of every format they read.

Bound, per output: |y - ref| <= (2 * 2^-11 + (K + 2) * 2^-24) * sum_k |x_k| |w_k| + 2^-20, the float32 accumulation
of K products (each tile's dequantized value rounded once), plus tf32 rounding of both inputs of tl.dot on a GPU
(2^-11 each); the interpreter's tl.dot is float32, so on the CPU the first term is slack.
"""

import numpy as np
import pytest
import torch

from deeproots.kernels.reference import reference_linear
from deeproots.kernels.triton.blocks import TILE_TYPES, geometry
from deeproots.kernels.triton.linear import SKINNY_ROWS, quantized_linear
from deeproots.quant import dequantize
from deeproots.quant.types import GGMLType as Q

SCALE_FIELDS = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q8_0: (0,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
U = 2.0**-24


def random_raw(ggml_type: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, row bytes) random blocks with finite f16 scales of a realistic size."""
    block_size, type_size = geometry(ggml_type)
    raw = rng.integers(0, 256, (n, k // block_size, type_size), dtype=np.uint8)
    for offset in SCALE_FIELDS[ggml_type]:
        raw[..., offset:offset + 2] = (rng.standard_normal(raw.shape[:2]) * 0.01).astype(np.float16)[..., None].view(
            np.uint8)
    return raw.reshape(n, -1)


def check(ggml_type: int, m: int, k: int, n: int, device: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    raw = random_raw(ggml_type, k, n, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    ours = quantized_linear(torch.from_numpy(x).to(device), torch.from_numpy(raw.reshape(-1)).to(device), ggml_type,
                            k, n, block_n=16).cpu().numpy().astype(np.float64)  # several programs, a partial one
    expected = reference_linear(x, raw, ggml_type, (k, n))  # (m, n) float64
    w = dequantize(raw.reshape(-1), ggml_type, (k, n)).astype(np.float64)  # (n, k)
    bound = (2 * 2.0**-11 + (k + 2) * U) * (np.abs(x) @ np.abs(w).T) + 2.0**-20
    worst = (np.abs(ours - expected) / bound).max()
    assert worst <= 1.0, f"{Q(ggml_type).name} M={m} K={k} N={n}: error reaches {worst:.3f} of the bound"


SLOW = pytest.mark.slow


@pytest.mark.parametrize("ggml_type", TILE_TYPES, ids=lambda t: Q(t).name)
# the skinny kernel: odd rows; one row and its most (seconds each under the interpreter)
@pytest.mark.parametrize("m", [3, pytest.param(1, marks=SLOW), pytest.param(SKINNY_ROWS, marks=SLOW)])
def test_skinny_product_matches_reference(ggml_type, m, device):
    block_size, _ = geometry(ggml_type)
    # 37 output rows: a partial program; one super-block (all 8 sub-blocks) or three legacy blocks per row
    check(ggml_type, m, block_size if block_size == 256 else 96, 37, device)


@pytest.mark.parametrize("ggml_type", TILE_TYPES, ids=lambda t: Q(t).name)
def test_tiled_product_matches_reference(ggml_type, device):
    block_size, _ = geometry(ggml_type)
    check(ggml_type, SKINNY_ROWS + 3, block_size if block_size == 256 else 64, 70, device, seed=1)  # partial tiles


@pytest.mark.slow  # 1100 output rows
def test_default_blocks_match_reference(device):
    """The launch's own block sizes (wide programs under the interpreter, narrow ones on a GPU), skinny and tiled."""
    block_size, _ = geometry(Q.Q4_K)
    for m in (2, SKINNY_ROWS + 1):
        rng = np.random.default_rng(m)
        raw = random_raw(Q.Q4_K, block_size, 1100, rng)
        x = rng.standard_normal((m, block_size)).astype(np.float32)
        ours = quantized_linear(torch.from_numpy(x).to(device), torch.from_numpy(raw.reshape(-1)).to(device), Q.Q4_K,
                                block_size, 1100).cpu().numpy()
        expected = reference_linear(x, raw, Q.Q4_K, (block_size, 1100))
        assert np.abs(ours - expected).max() <= 1e-3 * np.abs(expected).max()


def test_mismatched_shapes_are_an_internal_error(device):
    from deeproots.errors import InternalError

    with pytest.raises(InternalError, match="do not fit"):
        quantized_linear(torch.zeros(2, 64, device=device), torch.zeros(10, dtype=torch.uint8, device=device),
                         Q.Q8_0, 64, 4)
