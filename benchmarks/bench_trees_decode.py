"""Decode speed of two source trees of deeproots on one model file, alternating process by process.

    python benchmarks/bench_trees_decode.py FILE.gguf TREE_A TREE_B [--rounds 6] [--steps 128] [--threads 2]

A Python change cannot be timed against its parent in one process (both would be the same module), so each round
runs one child per tree (PYTHONPATH=TREE), A first in even rounds and B first in odd ones; a child loads the model
(its packed cache: set DEEPROOTS_HOME to keep it between children), decodes 32 untimed tokens after a 16-token
prompt, then times --steps decode steps. Prints each tree's median ms per token and the median of the per-round
ratios A / B (above 1: B is faster). Both trees must have their C kernels built (build_ext --inplace).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys


def child(path: str, steps: int, threads: int) -> None:
    import time

    import numpy as np

    import deeproots

    model = deeproots.load(path, context=48 + steps, threads=threads)
    tokens = np.random.default_rng(0).integers(model.config.vocab_size, size=48 + steps)
    cache = model.new_cache(48 + steps)
    model.net.forward(tokens[:16], cache)
    for t in range(16, 48):  # untimed: pages, thread pool, the experts' first touches
        model.net.forward(tokens[t:t + 1], cache)
    started = time.perf_counter()
    for t in range(48, 48 + steps):
        model.net.forward(tokens[t:t + 1], cache)
    print((time.perf_counter() - started) / steps * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("trees", nargs=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.file, args.steps, args.threads)
        return
    times: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for round_ in range(args.rounds):
        for tree in args.trees if round_ % 2 == 0 else args.trees[::-1]:
            out = subprocess.run([sys.executable, __file__, "--child", args.file, *args.trees, "--steps",
                                  str(args.steps), "--threads", str(args.threads)],
                                 env={**os.environ, "PYTHONPATH": tree}, check=True, capture_output=True, text=True)
            times[tree].append(float(out.stdout.splitlines()[-1]))
    for tree, samples in times.items():
        print(f"{tree}: median {statistics.median(samples):.2f} ms/token  {[round(s, 1) for s in samples]}")
    a, b = args.trees
    ratio = statistics.median(x / y for x, y in zip(times[a], times[b]))
    print(f"A / B per round, median: {ratio:.3f} (os.getloadavg: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
