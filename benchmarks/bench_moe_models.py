"""Whole mixture-of-experts models against llama.cpp: synthetic files of real shapes, prefill and decode, side by side.

    python benchmarks/bench_moe_models.py [--models olmoe-1b-7b:q4_0,qwen1.5-moe-a2.7b:q4_k_m] [-p 512] [-n 128]
                                          [-r 5] [--threads 2] [--folder /tmp/moe-files] [--keep] [--processes]

For each shape and file type, a file with random weights is written by our writer (benchmarks/synthetic_models.py),
then `deeproots bench --vs llama.cpp`'s engines (deeproots/bench.py: llama.cpp through llama-cpp-python, the same
file, the same tokens) run ppN and tgN alternately, repetition by repetition; medians are reported. Where the two
engines' weights (llama.cpp maps the file, deeproots its packed cache) do not both fit in the memory available, the
engines alternate process by process instead, each run loading its weights and warming up (untimed) before one
timed repetition, so neither is timed reading pages from disk. The file and its packed cache (DEEPROOTS_HOME inside
--folder) are deleted afterwards unless --keep.

The decode ceiling is the read bandwidth, measured in the same run with `deeproots bench`'s probe (kernels.bandwidth:
streaming reads of 1 GiB on the kernels' threads, 5 before and 5 after a file's runs, their median), divided by the
bytes one token reads in the file: every matrix but the
token embeddings (one row) and the experts, plus experts_per_token / n_experts of each expert tensor. The KV cache
(at most 128 positions: under 2% of those bytes) is left out. deeproots' packed layouts have the file's sizes,
except formats the CPU backend widens to Q8_0 at load (backends/cpu.py's kernel_type: MXFP4), which the "deeproots
reads" column counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ["olmoe-1b-7b:q4_0", "olmoe-1b-7b:q4_k_m", "qwen1.5-moe-a2.7b:q4_0", "qwen1.5-moe-a2.7b:q4_k_m"]


def active_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the file one decoded token reads, the same in deeproots' packed layouts) (see the docstring)."""
    from deeproots.backends.cpu import kernel_type
    from deeproots.formats.gguf import GGUFFile
    from deeproots.quant.types import tensor_nbytes

    with GGUFFile.open(path) as gguf:
        arch = gguf.metadata["general.architecture"]
        share = gguf.metadata[f"{arch}.expert_used_count"] / gguf.metadata[f"{arch}.expert_count"]
        in_file = in_packed = 0.0
        for name, info in gguf.tensors.items():
            if name == "token_embd.weight":
                continue
            read = info.nbytes * (share if "_exps." in name else 1.0)
            in_file += read
            in_packed += read * tensor_nbytes(kernel_type(info.ggml_type), info.n_elements) / info.nbytes
    return int(in_file), int(in_packed)


def engines_for(path: Path, context: int, threads: int, which: tuple[str, ...]) -> list:
    import deeproots
    from deeproots.bench import DeeprootsEngine, LlamaCppEngine

    engines = []
    if "deeproots" in which:
        engines.append(DeeprootsEngine(deeproots.load(path, context=context, threads=threads)))
    if "llama.cpp" in which:
        engines.append(LlamaCppEngine(path, context, threads))
    return engines


def timed_runs(path: Path, n_prompt: int, n_gen: int, repetitions: int, threads: int,
               which: tuple[str, ...]) -> dict[str, dict[str, list[float]]]:
    """tokens/s of each repetition, by engine and test, the engines alternating (bench.run_benchmark)."""
    from deeproots.bench import benchmark_tokens, run_benchmark
    from deeproots.formats.gguf import GGUFFile

    with GGUFFile.open(path) as gguf:
        vocab_size = len(gguf.metadata["tokenizer.ggml.tokens"])
    context = max(n_prompt, n_gen)
    results = run_benchmark(engines_for(path, context, threads, which), benchmark_tokens(vocab_size, context),
                            n_prompt, n_gen, repetitions)
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        out.setdefault(r.engine, {})[r.test] = r.tokens_per_second
    return out


def fits_together(path: Path) -> bool:
    """Both engines' weights fit in half the memory there is (llama.cpp maps the file and keeps its own repacked
    copy of some tensors, deeproots maps its packed cache: each about the file's size), leaving the rest to others."""
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    return 2 * path.stat().st_size < total / 2


def bench_file(path: Path, n_prompt: int, n_gen: int, repetitions: int, threads: int,
               processes: bool) -> tuple[dict, str]:
    """(median tokens/s by (engine, test), how the engines alternated)."""
    if not processes and fits_together(path):
        runs = timed_runs(path, n_prompt, n_gen, repetitions, threads, ("deeproots", "llama.cpp"))
        mode = "in one process"
    else:
        runs, mode = {}, "process by process"
        for _ in range(repetitions):
            for engine in ("deeproots", "llama.cpp"):
                out = subprocess.run([sys.executable, __file__, "--child", engine, str(path), "-p", str(n_prompt),
                                      "-n", str(n_gen), "--threads", str(threads)], check=True, capture_output=True,
                                     text=True).stdout
                for test, values in json.loads(out.splitlines()[-1]).items():
                    runs.setdefault(engine, {}).setdefault(test, []).extend(values)
    return {(engine, test): statistics.median(values) for engine, tests in runs.items()
            for test, values in tests.items()}, mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="shape:type, comma-separated")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/moe-files"))
    parser.add_argument("--keep", action="store_true", help="keep the files (and packed caches) written")
    parser.add_argument("--processes", action="store_true", help="alternate the engines process by process even "
                        "where both fit in memory")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one engine: warm-up and one timed repetition
        engine, path = args.child
        print(json.dumps(timed_runs(Path(path), args.n_prompt, args.n_gen, 1, args.threads, (engine,))[engine]))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    home = args.folder / "home"
    os.environ["DEEPROOTS_HOME"] = str(home)  # the packed caches go there

    from deeproots.kernels import set_num_threads
    from deeproots.kernels.bandwidth import read_bandwidth
    from synthetic_models import write_model

    set_num_threads(args.threads)  # the probe's threads, as the engines'
    cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
               .stdout.splitlines() if line.startswith("Model name"))
    print(f"{cpu}, {args.threads} threads; pp{args.n_prompt}, tg{args.n_gen}, medians of {args.repetitions}")
    print("| model | file | active MB/token (deeproots reads) | read GB/s | ceiling t/s | test | deeproots t/s "
          "| llama.cpp t/s | ratio | of ceiling | load avg | engines alternated |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for entry in args.models.split(","):
        shape, file_type = entry.split(":")
        path = args.folder / f"{shape}-{file_type}.gguf"
        if not path.exists():
            write_model(path, shape, file_type)
        in_file, in_packed = active_bytes(path)
        probes = read_bandwidth()
        medians, mode = bench_file(path, args.n_prompt, args.n_gen, args.repetitions, args.threads,
                                  args.processes)
        bandwidth = statistics.median(probes + read_bandwidth())
        ceiling = bandwidth * 1e9 / in_file
        for test in (f"pp{args.n_prompt}", f"tg{args.n_gen}"):
            ours, theirs = medians["deeproots", test], medians["llama.cpp", test]
            of_ceiling = f"{ours / ceiling:.0%}" if test.startswith("tg") else ""
            print(f"| {shape} {file_type} | {path.stat().st_size / 1e9:.2f} GB | {in_file / 1e6:.0f} "
                  f"({in_packed / 1e6:.0f}) | {bandwidth:.1f} | {ceiling:.1f} | {test} | {ours:.2f} | {theirs:.2f} "
                  f"| {ours / theirs:.2f}x | {of_ceiling} | {os.getloadavg()[0]:.1f} | {mode} |", flush=True)
        if not args.keep:
            path.unlink()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
