"""Prefill-sized packed products of compiled builds of the kernels, side by side in one process.

    python benchmarks/bench_prefill_builds.py [--types Q4_0,Q4_1,Q4_K,Q5_K,Q6_K,Q8_0] [--shape 2048x2048] [-T 512]
        [--threads 1] [--reps 9] BUILD.so [BUILD.so ...]

Each build (a compiled copy of deeproots.kernels._cpu, e.g. one from main and one from a branch: see
bench_decode_bandwidth.py for the command that compiles one) multiplies the same T x K activations by the same random
K x N weight of each type (synthetic_models.random_blocks), the builds alternating call by call; the medians are
printed as int8 Gop/s (2 x K x N x T per call) with the last build's speedup over the first, and the builds' outputs
are checked identical. The weight stays in cache, so this times the arithmetic, not memory. With one thread the clock
is the thread's CPU time, which another process taking the core does not inflate.
"""

import argparse
import statistics
import time

import numpy as np

from bench_decode_bandwidth import load_builds
from deeproots.kernels import pack_weight
from deeproots.quant import GGMLType
from synthetic_models import random_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q4_0,Q4_1,Q4_K,Q5_K,Q6_K,Q8_0")
    parser.add_argument("--shape", default="2048x2048", help="K x N")
    parser.add_argument("-T", type=int, default=512, help="rows of x (tokens)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("builds", nargs="+", help="paths of compiled _cpu builds")
    args = parser.parse_args()
    builds = load_builds(args.builds, args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    k, n = map(int, args.shape.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.T, k)).astype(np.float32)
    for type_name in args.types.split(","):
        ggml_type = GGMLType[type_name]
        weight = pack_weight([random_blocks(rng, ggml_type, k * n)], ggml_type, (k, n))
        outs = [np.empty((args.T, n), np.float32) for _ in builds]
        seconds = [[] for _ in builds]
        for _ in range(args.reps):
            for build, out, times in zip(builds, outs, seconds):
                started = clock()
                build.linear(int(ggml_type), weight.data, n, k, x, args.T, out)
                times.append(clock() - started)
        medians = [statistics.median(times) for times in seconds]
        rates = " | ".join(f"{2 * k * n * args.T / m / 1e9:5.0f} Gop/s" for m in medians)
        identical = all(np.array_equal(outs[0], out) for out in outs[1:])
        print(f"{type_name:5} T={args.T} {k}x{n} threads={args.threads}: {rates} | last / first "
              f"{medians[0] / medians[-1]:.2f}x | identical: {identical}")


if __name__ == "__main__":
    main()
