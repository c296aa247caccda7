"""Tensor (and pipeline) parallel against one process, side by side in one run: prefill and decode tokens/s, and
every follower rank's RSS.

    python benchmarks/bench_tensor_parallel.py MODEL [--ranks 1,2,4] [--cores 2] [-p 64] [-n 32] [-r 3] [--sum]
                                                     [--pp 2]

Every configuration is loaded at once and they run alternately, repetition by repetition (deeproots/bench.py's
run_benchmark), with the same total kernel threads (`--cores`: one process with that many, N ranks with cores / N
each, at least one). `--sum` adds Megatron's all-reduce reduction at 2 ranks beside the default exact one; `--pp N`
adds N pipeline stages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deeproots  # noqa: E402
from deeproots.bench import DeeprootsEngine, benchmark_tokens, run_benchmark  # noqa: E402


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident memory by kind (VmRSS, RssAnon, RssFile) in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1000
    return fields


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--ranks", default="1,2,4")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("-p", type=int, default=64)
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--sum", action="store_true")
    parser.add_argument("--pp", type=int, default=None)
    args = parser.parse_args()
    configs = [(int(n), "exact", 1) for n in args.ranks.split(",")] + ([(2, "sum", 1)] if args.sum else []) + \
        ([(1, "exact", args.pp)] if args.pp else [])
    engines, memory = [], []
    for ranks, reduction, stages in configs:
        threads = max(1, args.cores // (ranks * stages))
        model = deeproots.load(args.model, context=args.ctx, threads=threads, tp=ranks, tp_reduction=reduction,
                               pp=stages)
        engine = DeeprootsEngine(model)
        per_rank = f"({threads} thread{'s' * (threads > 1)}/rank)"
        engine.name = f"tp={ranks} {reduction} {per_rank}" if ranks > 1 else f"pp={stages} {per_rank}" \
            if stages > 1 else f"one process ({threads} threads)"
        engine.model = model
        engines.append(engine)
        pids = [os.getpid()] + ([w.pid for w in model.cluster.workers] if model.cluster else [])
        memory.append((engine.name, pids))
    # RSS after the loads (rank 0 of every configuration shares this process: its share is reported as the
    # difference of this process's RSS around each load would be; the followers are processes of their own)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs", flush=True)
    for name, pids in memory:
        print(name, [rss_mb(pid) for pid in pids[1:]] or "", flush=True)
    tokens = benchmark_tokens(engines[0].model.config.vocab_size, max(args.p, args.n))
    results = run_benchmark(engines, tokens, args.p, args.n, args.r)
    base = {r.test: statistics.median(r.tokens_per_second) for r in results if r.engine == engines[0].name}
    print("\n| configuration | test | median tokens/s | vs one process |\n|---|---|---|---|")
    for r in results:
        median = statistics.median(r.tokens_per_second)
        print(f"| {r.engine} | {r.test} | {median:.2f} | {median / base[r.test]:.2f} |")
    print(f"load average {os.getloadavg()}")
    for engine in engines:
        engine.model.close()


if __name__ == "__main__":
    main()
