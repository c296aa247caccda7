"""Decode's matrix-vector products against the memory read bandwidth, per matrix, side by side in one process.

    python benchmarks/bench_decode_bandwidth.py [--types Q4_0,Q4_K,Q5_K,Q6_K] [--shapes 4096x14336,14336x4096]
        [--threads 2] [-T 1] [--reps 9] [--from-cache] [BUILD.so ...]

For each type and shape (GGUF order K x N; the defaults are Llama-3-8B's FFN matrices), random blocks of that type
(synthetic_models.random_blocks) are packed into enough copies to sweep 1 GiB, twice this machine's L3, as one decode
step sweeps a whole model. Each repetition times, one after another: a sweep of T-row products through every build
given (compiled copies of deeproots.kernels._cpu, e.g. one built from main and one from a branch; default: the
installed one), then one plain read of the same buffers with the first build's read_bytes (the bandwidth probe of
`deeproots bench`). "of read" is the median over repetitions of read time / product time: the fraction of the read
bandwidth the product reaches, measured under the same load. The builds' outputs are checked to be identical.
With --from-cache each build also sweeps the first copy alone as many times (it stays in cache if it fits there):
the products' arithmetic rate, to set against the rate from memory.
"""

import argparse
import importlib.machinery
import importlib.util
import statistics
import time
from pathlib import Path

import numpy as np

from deeproots.kernels import _cpu, pack_weight
from deeproots.quant import GGMLType
from synthetic_models import random_blocks

SWEEP_BYTES = 1 << 30


def load_build(path: str):
    """A compiled copy of the extension at `path`, loaded beside the installed one (its own pool and threads)."""
    loader = importlib.machinery.ExtensionFileLoader("deeproots.kernels._cpu", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def load_builds(paths: list[str], threads: int) -> list:
    """The builds at `paths` (default: the installed extension), each on `threads` threads."""
    builds = [load_build(path) for path in paths] or [_cpu]
    for build in builds:
        build.set_num_threads(threads)
    return builds


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", default="Q4_0,Q4_K,Q5_K,Q6_K")
    parser.add_argument("--shapes", default="4096x14336,14336x4096", help="K x N, comma-separated")
    parser.add_argument("--threads", type=int, default=_cpu.get_num_threads())
    parser.add_argument("-T", type=int, default=1, help="rows of x (decode: 1)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--from-cache", action="store_true", help="also time each build on one copy, repeated")
    parser.add_argument("builds", nargs="*", help="paths of compiled _cpu builds (default: the installed one)")
    args = parser.parse_args()
    builds = load_builds(args.builds, args.threads)
    names = [Path(path).name for path in args.builds] or ["installed"]
    rng = np.random.default_rng(0)
    for type_name in args.types.split(","):
        ggml_type = GGMLType[type_name]
        for k, n in (tuple(map(int, shape.split("x"))) for shape in args.shapes.split(",")):
            raw = random_blocks(rng, ggml_type, k * n)
            first = pack_weight(raw, ggml_type, (k, n))
            weights = [first] + [pack_weight(raw, ggml_type, (k, n))
                                 for _ in range(max(1, SWEEP_BYTES // first.nbytes) - 1)]
            x = rng.standard_normal((args.T, k)).astype(np.float32)  # (T, K)
            outs = [np.empty((args.T, n), np.float32) for _ in builds]  # (T, N) each

            def sweep(build, out, copies):
                for w in copies:
                    build.linear(int(ggml_type), w.data, n, k, x, args.T, out)

            runs = [lambda b=b, o=o: sweep(b, o, weights) for b, o in zip(builds, outs)]
            if args.from_cache:
                runs += [lambda b=b, o=o: sweep(b, o, [first] * len(weights)) for b, o in zip(builds, outs)]
            runs.append(lambda: [builds[0].read_bytes(w.data) for w in weights])
            for run in runs:  # warm-up: page tables, thread pools
                run()
            if any(not np.array_equal(out, outs[0]) for out in outs[1:]):
                raise SystemExit(f"{type_name} {k}x{n}: the builds' outputs differ")
            times = [[] for _ in runs]
            for _ in range(args.reps):
                for run, samples in zip(runs, times):
                    samples.append(timed(run))
            nbytes = sum(w.nbytes for w in weights)
            read = times[-1]
            cells = [f"read {nbytes / statistics.median(read) / 1e9:5.1f} GB/s"]
            for name, samples in zip(names, times):
                fraction = statistics.median(r / s for r, s in zip(read, samples))
                cells.append(f"{name} {nbytes / statistics.median(samples) / 1e9:5.1f} GB/s, {fraction:4.0%} of read")
            for name, samples in zip(names, times[len(builds):-1]):  # with --from-cache
                cells.append(f"{name} from cache {nbytes / statistics.median(samples) / 1e9:5.1f} GB/s")
            print(f"{type_name:5} {k}x{n} T={args.T} threads={args.threads}: " + " | ".join(cells), flush=True)
            weights.clear()  # free this sweep before the next is packed


if __name__ == "__main__":
    main()
