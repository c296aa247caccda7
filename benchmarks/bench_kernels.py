"""Side-by-side timings of the packed-weight kernels vs torch fp32 matmul, on the default model's matrix shapes.

    python benchmarks/bench_kernels.py [--repeats 50] [--threads 2] [--model NAME_OR_PATH]

For each shape: decode (T=1) and prefill (T=512) medians of quantized_linear (numpy float32 x, writing into a
preallocated numpy `out`) and of torch.matmul on the dequantized fp32 weight (the same x and out, shared through
torch.from_numpy), in one process. Decode cycles through enough copies of each weight (packed and fp32 alike) to
overflow the 32 MB L3 cache, as a real decode step sweeping the whole model does; GB/s counts the packed weight
bytes read per call; "of BW" compares it with the memory read bandwidth measured at the start (torch.sum over
512 MB on the same threads; DESIGN.md quotes ~17 GB/s for two threads here).
Weights are the real ones of the default model in the store (`deeproots pull smollm2-135m`); without it the
benchmark stops with the store's error instead of timing other weights.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from deeproots.kernels import _cpu, pack_weight, quantized_linear, set_num_threads
from deeproots.quant import dequantize
from deeproots.quant.types import GGMLType
from deeproots.store import DEFAULT_MODEL, ModelStore

# (name in the model, GGUF shape (K, N), type): SmolLM2-135M's distinct matrix shapes
LAYERS = 30
PER_LAYER = {"blk.0.attn_q.weight": 2, "blk.0.attn_k.weight": 2, "blk.0.ffn_up.weight": 2, "blk.0.ffn_down.weight": 1}
SHAPES = [
    ("blk.0.attn_q.weight", (576, 576), GGMLType.Q4_1),
    ("blk.0.attn_k.weight", (576, 192), GGMLType.Q4_1),
    ("blk.0.ffn_up.weight", (576, 1536), GGMLType.Q4_1),
    ("blk.0.ffn_down.weight", (1536, 576), GGMLType.Q4_1),
    ("token_embd.weight", (576, 49152), GGMLType.Q8_0),
]
SWEEP_BYTES = 96 << 20  # decode reads this much weight per shape, in copies: 3x the L3 cache, like the model


def load_raw(model: Path) -> dict[str, np.ndarray]:
    """The raw bytes of each benchmarked matrix, read with gguf-py (an independent reader)."""
    from gguf import GGUFReader  # test/bench dependency only

    wanted = {name for name, _, _ in SHAPES}
    return {t.name: np.ascontiguousarray(t.data) for t in GGUFReader(str(model)).tensors if t.name in wanted}


def median_seconds(fn, operands: list, repeats: int) -> float:
    """Median time of fn(operand), cycling through the operands (copies that keep the cache cold)."""
    times = [timed(lambda: fn(operands[i % len(operands)])) for i in range(repeats + len(operands))]
    return statistics.median(times[len(operands) :])  # the first sweep warms up page tables and the thread pool


def read_bandwidth_gbs() -> float:
    """Best of a few full reads of a buffer 16x the L3 cache."""
    buffer = torch.ones(128 << 20, dtype=torch.float32)  # 512 MB
    buffer.sum()
    best = min(timed(buffer.sum) for _ in range(5))
    return buffer.numel() * 4 / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def copies(make, nbytes: int, tokens: int) -> list:
    """Enough independent copies to sweep SWEEP_BYTES at decode; one at prefill (compute-bound)."""
    return [make() for _ in range(max(1, -(-SWEEP_BYTES // nbytes)) if tokens == 1 else 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a store name or a .gguf path")
    args = parser.parse_args()
    set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    model = ModelStore().resolve(args.model)  # ModelNotFoundError names the pull command when it is missing
    raws = load_raw(model)
    bandwidth = read_bandwidth_gbs()
    print(f"ISA {_cpu.ISA}, {args.threads} threads, weights of {model.name}, {os.cpu_count()} CPUs; medians of {args.repeats}")
    print(f"memory read bandwidth (torch.sum over 512 MB, {args.threads} threads): {bandwidth:.1f} GB/s")
    header = f"{'matrix':24} {'type':5} {'T':>4} {'ours ms':>9} {'torch ms':>9} {'speedup':>8} {'GB/s':>6} {'of BW':>6}"
    print(header)
    print("-" * len(header))
    medians = {}  # (name, T) -> (ours, torch) seconds
    for name, (k, n), ggml_type in SHAPES:
        raw = raws[name]
        weight = pack_weight(raw, ggml_type, (k, n))
        dense = torch.from_numpy(dequantize(raw.reshape(-1).view(np.uint8), ggml_type, (k, n)))  # (N, K)
        for tokens in (1, 512):
            x = rng.standard_normal((tokens, k), dtype=np.float32)
            out = np.empty((tokens, n), np.float32)
            x_t, out_t = torch.from_numpy(x), torch.from_numpy(out)  # the same buffers, for torch
            reps = args.repeats if tokens == 1 else max(3, args.repeats // 10)
            packed = copies(lambda: pack_weight(raw, ggml_type, (k, n)), weight.nbytes, tokens)
            denses = copies(dense.clone, dense.numel() * 4, tokens)
            ours = median_seconds(lambda w: quantized_linear(x, w, out), packed, reps)
            theirs = median_seconds(lambda d: torch.matmul(x_t, d.T, out=out_t), denses, reps)
            del packed, denses
            medians[name, tokens] = ours, theirs
            gbs = weight.nbytes / ours / 1e9
            print(
                f"{name:24} {ggml_type.name:5} {tokens:4d} {ours * 1e3:9.4f} {theirs * 1e3:9.4f} "
                f"{theirs / ours:7.2f}x {gbs:6.1f} {gbs / bandwidth:6.0%}"
            )

    print_model_totals(medians)


def print_model_totals(medians: dict[tuple[str, int], tuple[float, float]]) -> None:
    """The products of one whole forward pass: 30 layers of q, k, v, o, gate, up, down plus the output projection
    (for the last token only, at prefill)."""
    print(f"\nall matrix products of a {LAYERS}-layer forward pass:")
    for tokens, label in ((1, "decode, per token"), (512, "prefill, 512 tokens")):
        for i, who in enumerate(("ours", "torch fp32")):
            layers = sum(count * medians[name, tokens][i] for name, count in PER_LAYER.items()) * LAYERS
            total = layers + medians["token_embd.weight", 1][i]
            print(f"  {label:20} {who:10} {total * 1e3:8.2f} ms = {tokens / total:7.0f} tokens/s (products only)")


if __name__ == "__main__":
    main()
