"""Where the time of a forward goes: attention, the MLP's products (a mixture's router, expert products and the
gather and scatter around them), the output projection.

    python benchmarks/profile_step.py FILE.gguf [--prompt 128] [--steps 32] [--threads 2]

Wraps each part of every block in a timer (perf_counter, a few hundred nanoseconds a call) and runs one prefill of
--prompt random tokens, then --steps decode steps; prints milliseconds per forward (prefill) and per token
(decode). A mixture's "gather, scatter" is its own work besides its products: sorting the (token, slot) pairs by
expert, the SiLU between them, and weighting and summing each token's slots. A dense MLP's "SiLU" is its gating
between the two products. "rest" is the step's time outside every part timed: norms, residual adds, the
embedding, Python between the blocks.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import deeproots


def timed(totals: dict[str, float], part: str, fn):
    def wrapper(*args):
        started = time.perf_counter()
        result = fn(*args)
        totals[part] += time.perf_counter() - started
        return result
    return wrapper


def instrument(model, totals: dict[str, float]) -> None:
    for block in model.net.blocks:
        moe = block.moe
        attention = "attention (q/k/v/o products, norms, RoPE, attention)"
        block.attention = timed(totals, attention, block.attention)
        block.project = timed(totals, attention, block.project)  # the o product, outside block.attention
        block.attn_qkv = timed(totals, "  q/k/v products", block.attn_qkv)
        block.attn_output = timed(totals, "  o product", block.attn_output)
        if moe is None:
            block.mlp = timed(totals, "MLP total", block.mlp)
            block.ffn_gate_up = timed(totals, "  gate/up products", block.ffn_gate_up)
            block.ffn_down = timed(totals, "  down products", block.ffn_down)
            continue
        moe.route = timed(totals, "router (product, softmax, top-k)", moe.route)
        moe.experts_output = timed(totals, "experts total", moe.experts_output)
        moe.ffn_gate_up_exps.grouped = timed(totals, "  expert gate/up products", moe.ffn_gate_up_exps.grouped)
        moe.ffn_down_exps.grouped = timed(totals, "  expert down products", moe.ffn_down_exps.grouped)
        if moe.shared is not None:
            moe.shared = timed(totals, "shared expert", moe.shared)
    model.net.logits = timed(totals, "output projection", model.net.logits)


def report(totals: dict[str, float], label: str, per: int, total: float) -> None:
    print(f"{label}: {total / per * 1e3:.2f} ms per {'token' if per > 1 else 'forward'}")
    if "experts total" in totals:
        derived = [("  gather, scatter, SiLU", totals["experts total"] - totals["  expert gate/up products"] -
                    totals["  expert down products"])]
    else:
        derived = [("  SiLU", totals["MLP total"] - totals["  gate/up products"] - totals["  down products"])]
    outermost = [seconds for part, seconds in totals.items() if not part.startswith(" ")]
    for part, seconds in [*totals.items(), *derived, ("rest", total - sum(outermost))]:
        print(f"  {part:55} {seconds / per * 1e3:8.2f} ms  {seconds / total:4.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = deeproots.load(args.file, context=args.prompt + args.steps, threads=args.threads)
    totals: dict[str, float] = collections.defaultdict(float)
    instrument(model, totals)
    tokens = np.random.default_rng(0).integers(model.config.vocab_size, size=args.prompt + args.steps)
    model.net.forward(tokens[:8], model.new_cache(8))  # warm-up: pages, thread pool
    totals.clear()
    cache = model.new_cache(args.prompt + args.steps)
    started = time.perf_counter()
    model.net.forward(tokens[:args.prompt], cache)
    report(totals, f"prefill of {args.prompt} tokens", 1, time.perf_counter() - started)
    totals.clear()
    started = time.perf_counter()
    for t in range(args.prompt, args.prompt + args.steps):
        model.net.forward(tokens[t:t + 1], cache)
    report(totals, f"decode, {args.steps} steps", args.steps, time.perf_counter() - started)


if __name__ == "__main__":
    main()
