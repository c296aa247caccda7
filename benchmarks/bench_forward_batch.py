"""The network alone: decode tokens/s of `forward_batch` at several batch sizes (no sampling, no engine, no HTTP).

    python benchmarks/bench_forward_batch.py [--batch 1,4,8] [--steps 40] [--rounds 3] [--context 40]

Each sequence's cache first holds `--context` prompt tokens (the server benchmark's chat prompts are ~35), then
every step feeds one token per sequence, as a decode step of the engine does. Batch sizes alternate round by
round; the figure is B / (median step time) over all rounds. Context for `deeproots bench-serve`: the engine can
at best match these per-step rates.
"""

import argparse
import statistics
import time

import numpy as np

import deeproots


def decode_steps(model, batch: int, steps: int, context: int) -> list[float]:
    caches = [model.new_cache(context + steps + 1) for _ in range(batch)]
    prompt = np.arange(100, 100 + context)
    model.net.forward_batch(np.tile(prompt, batch), caches, [context] * batch)
    tokens = np.full(batch, 1000, dtype=np.int64)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.net.forward_batch(tokens, caches, [1] * batch)
        times.append(time.perf_counter() - start)
    return times[3:]  # the first steps warm the allocator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--batch", default="1,4,8")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context", type=int, default=40)
    args = parser.parse_args()
    model = deeproots.load(args.model)
    sizes = [int(b) for b in args.batch.split(",")]
    times: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.rounds):
        for b in sizes:
            times[b] += decode_steps(model, b, args.steps, args.context)
    for b in sizes:
        step = statistics.median(times[b])
        print(f"batch {b:>3}: step {step * 1e3:6.2f} ms  {b / step:7.1f} tokens/s")


if __name__ == "__main__":
    main()
