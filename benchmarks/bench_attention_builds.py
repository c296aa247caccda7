"""The attention kernel of compiled builds, side by side in one process.

    python benchmarks/bench_attention_builds.py [--kv f16,q8_0] [--threads 2] [--reps 9] BUILD.so [BUILD.so ...]

Each build (a compiled copy of deeproots.kernels._cpu: see bench_decode_bandwidth.py for the command) runs
kernels.cached_attention on the same q, keys and values, the builds alternating call by call, in reverse order every
other repetition. Shapes: the default model's heads (SmolLM2-135M: 9 query heads, 3 KV heads of 64), OLMoE-1B-7B's
(16 and 16 of 128) and Llama-3-8B's (32 and 8 of 128); decode (T = 1) at 256, 1024 and 4096 cached positions and a
512-token prefill. Prints median microseconds per call, each build's speedup over the first, and whether the
builds' outputs are identical (they must be: a row's bits do not depend on the build's schedule).
"""

import argparse
import statistics
import time

import numpy as np

from bench_decode_bandwidth import load_builds

import deeproots.kernels.attention as attention

SHAPES = {"SmolLM2-135M": (9, 3, 64), "OLMoE-1B-7B": (16, 16, 128), "Llama-3-8B": (32, 8, 128)}
CASES = [(1, 256), (1, 1024), (1, 4096), (512, 512)]  # (T, L)


def cache_rows(rng, kv: str, heads: int, length: int, dim: int) -> np.ndarray:
    """(heads, length, D) f16, or (heads, length, D / 32 * 34) q8_0 rows, of random values."""
    rows = rng.standard_normal((heads, length, dim), dtype=np.float32)
    if kv == "f16":
        return rows.astype(np.float16)
    out = np.empty((heads, length, dim // 32 * 34), np.uint8)
    attention.quantize_q8_0_rows(rows, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv", default="f16,q8_0", help="KV cache types, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("builds", nargs="+", help="paths of compiled _cpu builds")
    args = parser.parse_args()
    builds = load_builds(args.builds, args.threads)
    rng = np.random.default_rng(0)
    for kv in args.kv.split(","):
        for shape, (n_heads, n_kv_heads, dim) in SHAPES.items():
            for T, L in CASES:
                q = rng.standard_normal((T, n_heads, dim), dtype=np.float32).transpose(1, 0, 2)  # (n_heads, T, D)
                k, v = (cache_rows(rng, kv, n_kv_heads, L, dim) for _ in range(2))
                outs = [np.empty((T, n_heads * dim), np.float32) for _ in builds]
                calls = max(1, int(2e8 // (n_heads * T * L * dim)))  # ~0.1 s of work per sample

                def run(build, out):
                    attention._attention = build.attention  # the module's C entry, swapped for this build's
                    for _ in range(calls):
                        attention.cached_attention(q, k, v, dim ** -0.5, out)

                samples = [[] for _ in builds]
                for rep in range(args.reps + 1):  # the first round warms up
                    order = range(len(builds)) if rep % 2 else reversed(range(len(builds)))
                    for i in order:
                        started = time.perf_counter()
                        run(builds[i], outs[i])
                        if rep:
                            samples[i].append((time.perf_counter() - started) / calls * 1e6)
                medians = [statistics.median(s) for s in samples]
                identical = all(np.array_equal(out, outs[0]) for out in outs[1:])
                cells = " | ".join(f"{m:9.1f} us ({medians[0] / m:4.2f}x)" for m in medians)
                print(f"{kv:5} {shape:13} T={T:<4} L={L:<5}: {cells} | identical: {identical}", flush=True)


if __name__ == "__main__":
    main()
