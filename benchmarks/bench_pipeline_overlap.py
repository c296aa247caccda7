"""Pipeline stages overlapping under load: decode tokens/s of B sequences decoded together by the engine, one process
against two stages with their steps overlapping and in turn, side by side in one run.

    python benchmarks/bench_pipeline_overlap.py MODEL [--batch 4] [-p 32] [-n 64] [-r 3] [--cores 2] [--ctx 512]
                                                      [--pp-split 13]

Same total kernel threads: one process with `--cores`, each of the two ranks with half. The two pipeline rows are
one cluster: "in turn" sets its backend's steps_in_flight to 1, as DEEPROOTS_PP_OVERLAP=0 does at load. Rows run
alternately, repetition by repetition, after one warm-up each. A repetition submits B requests of p random prompt
tokens (each its own) at once, greedy, end-of-turn tokens banned so every sequence decodes n tokens: prefill
tokens/s is the B x p prompt tokens over the time until every sequence has its first token; decode tokens/s counts
the tokens produced after that moment, up to the last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deeproots  # noqa: E402
from deeproots.bench import benchmark_tokens  # noqa: E402
from deeproots.cli_options import layer_list  # noqa: E402
from deeproots.engine import Engine, EngineConfig, GenerationRequest  # noqa: E402
from deeproots.sampling import SamplingParams  # noqa: E402


def rates(engine: Engine, prompts: list[list[int]], n_tokens: int, params: SamplingParams) -> tuple[float, float]:
    """(prefill, decode) tokens/s of the prompts' sequences run together (see the module docstring)."""
    times: list[list[float]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def collect(index: int):
        def on_event(event) -> None:
            times[index].append(time.perf_counter())
            if isinstance(event, Exception) or event.finish_reason is not None:
                done.release()
        return on_event

    submitted = time.perf_counter()
    for index, prompt in enumerate(prompts):
        engine.submit(GenerationRequest(prompt, params, n_tokens, collect(index)))
    for _ in prompts:
        done.acquire()
    start = max(stamps[0] for stamps in times)
    end = max(stamps[-1] for stamps in times)
    decoded = sum(stamp > start for stamps in times for stamp in stamps)
    return sum(map(len, prompts)) / (start - submitted), decoded / (end - start)


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("-p", type=int, default=32)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-r", type=int, default=3)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--pp-split", type=layer_list, default=None)
    args = parser.parse_args()
    single = deeproots.load(args.model, context=args.ctx, threads=args.cores)
    staged = deeproots.load(args.model, context=args.ctx, threads=max(1, args.cores // 2), pp=2,
                            pp_split=args.pp_split)
    backend = staged.loaded.backend
    engines = {name: Engine(model.loaded, EngineConfig(max_running=args.batch, max_queue=args.batch)).start()
               for name, model in (("one process", single), ("pp=2", staged))}
    stages = f"pp=2{f' (split at {args.pp_split[0]})' if args.pp_split else ''}"
    rows = [(f"one process, {args.cores} threads", "one process", 1),
            (f"{stages} overlapping (2 steps in flight)", "pp=2", 2), (f"{stages} in turn (1 step in flight)", "pp=2", 1)]
    stops = {token: -100.0 for token in single.tokenizer.stop_ids}
    params = SamplingParams(temperature=0.0, logit_bias=stops)
    tokens = benchmark_tokens(single.config.vocab_size, args.p * args.batch)
    prompts = [tokens[i * args.p:(i + 1) * args.p] for i in range(args.batch)]
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in rows}
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, batch {args.batch}, p {args.p}, n {args.n}",
          flush=True)
    for repetition in range(args.r + 1):  # the first: warm-up
        for name, engine, in_flight in rows:
            backend.steps_in_flight = in_flight
            pids = [os.getpid(), *(worker.pid for worker in staged.cluster.workers)]
            cpu, started = [cpu_seconds(pid) for pid in pids], time.perf_counter()
            prefill, decode = rates(engines[engine], prompts, args.n, params)
            busy = [(cpu_seconds(pid) - before) / (time.perf_counter() - started) for pid, before in zip(pids, cpu)]
            if repetition:
                measured[name].append((prefill, decode, *busy))
            print(f"{repetition or 'warm-up'} {name}: prefill {prefill:.2f}, decode {decode:.2f} tokens/s, CPU "
                  f"{' + '.join(f'{b:.0%}' for b in busy)}", flush=True)
    medians = {name: [statistics.median(part) for part in zip(*values)] for name, values in measured.items()}
    base = medians[rows[0][0]]
    print(f"\n| configuration | prefill tokens/s ({args.batch} x {args.p}) | decode tokens/s ({args.batch} sequences) "
          "| prefill / decode vs one process | CPU of this process + rank 1 |\n|---|---|---|---|---|")
    for name, (prefill, decode, *busy) in medians.items():
        print(f"| {name} | {prefill:.2f} | {decode:.2f} | {prefill / base[0]:.2f} / {decode / base[1]:.2f} | "
              f"{' + '.join(f'{b:.0%}' for b in busy)} |")
    print(f"load average {os.getloadavg()}")
    for engine in engines.values():
        engine.stop()
    staged.close()


if __name__ == "__main__":
    main()
