"""A forward step's Python-side choices, side by side in one process: the same model and kernels, each variant
switched on in turn, repetition by repetition, its logits checked to be the same bits as the first variant's. The
last variant's routing weights round differently (by up to 1 unit in the last place), so its logits are held within
1e-2 of the largest logit instead: a random-weight file amplifies the last bits a layer changes.

    python benchmarks/bench_step_variants.py FILE.gguf [--prompt 256] [--steps 64] [--reps 5] [--threads 2]
        [--variants "rows by index,compiled routing"]

Variants (each adds to the one before it):
- "before": one sequence's attention as the per-sequence loop (RoPE, cache update, attention: backends/base.py's
  per_sequence over the kernels), and a mixture's gate/up products over its tokens' rows copied out in numpy, one
  copy per (token, slot) pair;
- "batched attention": one sequence through kernels.attention.batched_attention, as several always went;
- "rows by index": the gate/up products read each pair's token row by index (kernels.experts_linear's `rows`):
  every token quantized once, not once per expert it is routed to;
- "compiled routing": a mixture's router softmax / top-k and the weighted sum of its experts' rows as one compiled
  call each (kernels.route, kernels.combine_experts) instead of backends/formulas.py's numpy (route,
  combine_experts), which every variant before it runs.
Prints tokens/s medians for decode (--steps tokens, from an empty cache) and a --prompt prefill, and for each variant
after the first the median over repetitions of its rate / the rate of the variant before it in the same repetition
(the variants run in reverse order every other repetition).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

import deeproots
from deeproots.backends import formulas
from deeproots.backends.base import per_sequence
from deeproots.backends.cpu import _rotate_fast
from deeproots.bench import benchmark_tokens
from deeproots.kernels import cached_attention

VARIANTS = ["before", "batched attention", "rows by index", "compiled routing"]


def switch(model, variant: str, originals: dict) -> None:
    """Put the model's blocks in `variant` (originals: each block's primitives and gate/up products as loaded)."""
    loop = per_sequence(_rotate_fast, cached_attention)
    for block in model.net.blocks:
        ops, grouped = originals[id(block)]
        block.ops = ops if variant != "before" else dataclasses.replace(ops, attend_sequences=loop)
        if block.moe is not None:
            block.moe.ops = ops if variant == "compiled routing" else dataclasses.replace(
                ops, route=formulas.route, combine_experts=formulas.combine_experts)
            gathered = (lambda x, chosen, starts, rows=None, grouped=grouped:
                        grouped(x if rows is None else x[rows], chosen, starts))
            block.moe.ffn_gate_up_exps.grouped = gathered if variant in VARIANTS[:2] else grouped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, in the order above")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"--variants: each must be one of {', '.join(VARIANTS)}")
    model = deeproots.load(args.file, context=max(args.prompt, args.steps), threads=args.threads)
    originals = {id(b): (b.ops, b.moe.ffn_gate_up_exps.grouped if b.moe is not None else None)
                 for b in model.net.blocks}
    tokens = np.asarray(benchmark_tokens(model.config.vocab_size, max(args.prompt, args.steps)), np.int64)
    cache = model.new_cache()

    def decode() -> np.ndarray:
        cache.truncate(0)
        return np.concatenate([model.net.forward(tokens[t:t + 1], cache) for t in range(args.steps)])

    def prefill() -> np.ndarray:
        cache.truncate(0)
        return model.net.forward(tokens[:args.prompt], cache)

    for test, run, n in (("decode", decode, args.steps), ("prefill", prefill, args.prompt)):
        rates: dict[str, list[float]] = {v: [] for v in variants}
        first, largest = None, 0.0
        for rep in range(args.reps + 1):  # the first round warms up, untimed
            for variant in variants[::-1] if rep % 2 else variants:
                switch(model, variant, originals)
                started = time.perf_counter()
                logits = run()
                elapsed = time.perf_counter() - started
                first = logits if first is None else first
                difference = float(np.abs(logits - first).max() / np.abs(first).max())
                rounded_apart = (variant == VARIANTS[-1]) != (variants[0] == VARIANTS[-1])
                if rounded_apart:
                    largest = max(largest, difference)
                if difference > (1e-2 if rounded_apart else 0.0):
                    raise SystemExit(f"{variant}: {test} logits differ from {variants[0]}'s by {difference:.2g}")
                if rep:
                    rates[variant].append(n / elapsed)
        ratios = [f"{b} / {a} {statistics.median(y / x for x, y in zip(rates[a], rates[b])):.3f}"
                  for a, b in zip(variants, variants[1:])]
        print(f"{test} ({n} tokens), t/s medians of {args.reps}: " + ", ".join(
            f"{v} {statistics.median(r):.2f}" for v, r in rates.items()) + "; median ratios: " + ", ".join(ratios) +
            " (same bits" + (f"; {VARIANTS[-1]}: {largest:.1e} of the largest logit apart" if largest else "") + ")",
            flush=True)


if __name__ == "__main__":
    main()
