"""Whole mixture-of-experts models against llama.cpp: synthetic files of real shapes, prefill and decode, side by side.

    python benchmarks/bench_moe_models.py [--models olmoe-1b-7b:q4_0,qwen1.5-moe-a2.7b:q4_k_m] [-p 512] [-n 128]
                                          [-r 5] [--threads 2] [--folder /tmp/moe-files] [--keep]

For each shape and file type, a file with random weights is written by our writer (benchmarks/synthetic_models.py),
then `deeproots bench --vs llama.cpp`'s engines (deeproots/bench.py: llama.cpp through llama-cpp-python, the same
file, the same tokens) run ppN and tgN alternately, repetition by repetition; medians are reported. The file and its
packed cache (DEEPROOTS_HOME inside --folder) are deleted afterwards unless --keep.

The decode ceiling is the read bandwidth, measured in the same run (bench_kernels.read_bandwidth_gbs: the best of five
sums over 512 MB on the same threads), divided by the bytes one token reads in the file: every matrix but the
token embeddings (one row) and the experts, plus experts_per_token / n_experts of each expert tensor. The KV cache
(at most 128 positions: under 2% of those bytes) is left out. deeproots' packed layouts have the file's sizes,
except Q5_0, widened to Q8_0 at load (34/22 of its bytes), which the "deeproots reads" column counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

MODELS = ["olmoe-1b-7b:q4_0", "olmoe-1b-7b:q4_k_m", "qwen1.5-moe-a2.7b:q4_0", "qwen1.5-moe-a2.7b:q4_k_m"]


def active_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the file one decoded token reads, the same in deeproots' packed layouts) (see the docstring)."""
    from deeproots.formats.gguf import GGUFFile
    from deeproots.quant import GGMLType

    with GGUFFile.open(path) as gguf:
        arch = gguf.metadata["general.architecture"]
        share = gguf.metadata[f"{arch}.expert_used_count"] / gguf.metadata[f"{arch}.expert_count"]
        in_file = in_packed = 0.0
        for name, info in gguf.tensors.items():
            if name == "token_embd.weight":
                continue
            read = info.nbytes * (share if "_exps." in name else 1.0)
            in_file += read
            in_packed += read * (34 / 22 if info.ggml_type == GGMLType.Q5_0 else 1.0)
    return int(in_file), int(in_packed)


def bench_file(path: Path, n_prompt: int, n_gen: int, repetitions: int, threads: int) -> dict[tuple[str, str], float]:
    """Median tokens/s by (engine, test)."""
    import deeproots
    from deeproots.bench import DeeprootsEngine, LlamaCppEngine, benchmark_tokens, run_benchmark

    context = max(n_prompt, n_gen)
    model = deeproots.load(path, context=context, threads=threads)
    engines = [DeeprootsEngine(model), LlamaCppEngine(path, context, threads)]
    results = run_benchmark(engines, benchmark_tokens(model.config.vocab_size, context), n_prompt, n_gen, repetitions)
    return {(r.engine, r.test): statistics.median(r.tokens_per_second) for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="shape:type, comma-separated")
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/moe-files"))
    parser.add_argument("--keep", action="store_true", help="keep the files (and packed caches) written")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    os.environ["DEEPROOTS_HOME"] = str(Path(tempfile.mkdtemp(dir=args.folder)))  # the packed caches go there

    import torch
    from bench_kernels import read_bandwidth_gbs
    from synthetic_models import write_model

    torch.set_num_threads(args.threads)
    cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
               .stdout.splitlines() if line.startswith("Model name"))
    print(f"{cpu}, {args.threads} threads; pp{args.n_prompt}, tg{args.n_gen}, medians of {args.repetitions}")
    print("| model | file | active MB/token (deeproots reads) | read GB/s | ceiling t/s | test | deeproots t/s "
          "| llama.cpp t/s | ratio | of ceiling | load avg |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for entry in args.models.split(","):
        shape, file_type = entry.split(":")
        path = args.folder / f"{shape}-{file_type}.gguf"
        if not path.exists():
            write_model(path, shape, file_type)
        in_file, in_packed = active_bytes(path)
        medians = bench_file(path, args.n_prompt, args.n_gen, args.repetitions, args.threads)
        bandwidth = read_bandwidth_gbs()
        ceiling = bandwidth * 1e9 / in_file
        for test in (f"pp{args.n_prompt}", f"tg{args.n_gen}"):
            ours, theirs = medians["deeproots", test], medians["llama.cpp", test]
            of_ceiling = f"{ours / ceiling:.0%}" if test.startswith("tg") else ""
            print(f"| {shape} {file_type} | {path.stat().st_size / 1e9:.2f} GB | {in_file / 1e6:.0f} "
                  f"({in_packed / 1e6:.0f}) | {bandwidth:.1f} | {ceiling:.1f} | {test} | {ours:.2f} | {theirs:.2f} "
                  f"| {ours / theirs:.2f}x | {of_ceiling} | {os.getloadavg()[0]:.1f} |", flush=True)
        if not args.keep:
            path.unlink()
            shutil.rmtree(os.environ["DEEPROOTS_HOME"], ignore_errors=True)
            Path(os.environ["DEEPROOTS_HOME"]).mkdir()


if __name__ == "__main__":
    main()
