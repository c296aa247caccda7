"""Resident memory of a mixture-of-experts model on the CPU backend: at load, and after 1,000 decoded tokens.

    python benchmarks/bench_moe_memory.py [--file F.gguf] [--shape olmoe-1b-7b] [--type q4_0] [--tokens 1000]

Without --file, a synthetic file of the shape is written first (benchmarks/synthetic_models.py). Three loads, each
in a process of its own, with a packed cache folder of their own (DEEPROOTS_HOME in a temporary folder beside the
file): the baseline, without the packed cache (DEEPROOTS_PACKED_CACHE=0), packs every weight into the process's own
memory, as every first load did before the packed cache was written through a shared map; the first load with the
cache packs every expert into the cache file it writes; the second maps that cache.
Each reports /proc/self/status after load and after decoding: VmRSS, split into RssAnon (the process's own memory:
what a model near the size of RAM must not need) and RssFile (mapped file pages: the kernel can drop and re-read
them), and VmHWM, the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def memory_mb() -> dict[str, float]:
    """FIELDS of /proc/self/status in MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {name: int(status[name].split()[0]) / 1024 for name in FIELDS}


def measure(path: str, n_tokens: int, threads: int) -> dict:
    """In this process: load, decode n_tokens (llama-bench's tg: one token per forward), memory at each point."""
    import deeproots
    from deeproots.bench import DeeprootsEngine, benchmark_tokens

    started = time.perf_counter()
    model = deeproots.load(path, context=n_tokens + 1, threads=threads)
    loaded = time.perf_counter() - started
    at_load = memory_mb()
    started = time.perf_counter()
    DeeprootsEngine(model).decode(benchmark_tokens(model.config.vocab_size, n_tokens))
    return {"load_s": loaded, "at_load": at_load, "decode_tokens_per_s": n_tokens / (time.perf_counter() - started),
            "after_decode": memory_mb()}


def run_child(path: Path, home: Path, n_tokens: int, threads: int, packed_cache: bool) -> dict:
    env = {**os.environ, "DEEPROOTS_HOME": str(home), "DEEPROOTS_PACKED_CACHE": "1" if packed_cache else "0"}
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--tokens", str(n_tokens),
                          "--threads", str(threads)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="an existing MoE GGUF file (else a synthetic one is written)")
    parser.add_argument("--shape", default="olmoe-1b-7b")
    parser.add_argument("--type", default="q4_0")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/moe-files"), help="where files are written")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.tokens, args.threads)))
        return
    args.folder.mkdir(parents=True, exist_ok=True)
    path = args.file
    if path is None:
        from synthetic_models import write_model

        path = args.folder / f"{args.shape}-{args.type}.gguf"
        if not path.exists():
            write_model(path, args.shape, args.type)
    print(f"{path} ({path.stat().st_size / 1e6:,.0f} MB), {args.tokens} tokens, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.folder) as home:
        for label, packed_cache in (("baseline: no packed cache (packs into the process's memory)", False),
                                    ("first load (packs, writes the packed cache)", True),
                                    ("later load (maps the packed cache)", True)):
            result = run_child(path, Path(home), args.tokens, args.threads, packed_cache)
            print(f"{label}: load {result['load_s']:.1f} s, decode {result['decode_tokens_per_s']:.1f} tokens/s")
            for point in ("at_load", "after_decode"):
                print(f"  {point:13} " + ", ".join(f"{name} {value:,.0f} MB" for name, value in result[point].items()))


if __name__ == "__main__":
    main()
