"""What a decode-size call into the compiled core costs, in this checkout's extension and a baseline build side by side.

    python benchmarks/bench_call_overhead.py --baseline PATH/_cpu.cpython-311-x86_64-linux-gnu.so [--blocks 400]

The baseline is another build of deeproots.kernels._cpu, e.g. of the commit before the core checked its own
arguments:  git archive <commit> | tar -x -C DIR && (cd DIR && python setup.py build_ext --inplace -q).
Both extensions are loaded into this one process and called in alternating blocks of ~1 ms (A B A B ...), on one
kernel thread, with the arguments of one decode step of the default model (d = 576, 9 heads over 3 kv heads of 64,
512 cached positions, ffn 1536): linear (a Q4_1 576 x 576 weight), rms_norm, silu_mul and attention (q a
(heads, 1, D) view, k and v views of the first 512 rows of longer caches), each writing into a preallocated output.
Per call: the fastest block, which is the one least disturbed by other processes on a shared machine; in microseconds.
"""

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from deeproots.kernels import _cpu, pack_weight
from deeproots.quant import GGMLType, quantize

D, HEADS, KV_HEADS, HEAD_DIM, CACHED, FFN = 576, 9, 3, 64, 512, 1536


def load_extension(path: Path):
    spec = importlib.util.spec_from_file_location("_cpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_calls(module) -> dict:
    """name -> a call of `module`'s entry point with decode-size arguments. Builds without MAX_THREADS predate the
    checked boundary and take attention's strides as ints."""
    rng = np.random.default_rng(0)
    weight = pack_weight(quantize(rng.standard_normal((D, D), dtype=np.float32), GGMLType.Q4_1), GGMLType.Q4_1, (D, D))
    x, norm, out = rng.standard_normal((1, D), dtype=np.float32), np.ones(D, np.float32), np.empty((1, D), np.float32)
    gate_up, hidden = rng.standard_normal((1, 2 * FFN), dtype=np.float32), np.empty((1, FFN), np.float32)
    keys = rng.standard_normal((KV_HEADS, CACHED + 64, HEAD_DIM), dtype=np.float32)[:, :CACHED]
    values = rng.standard_normal((KV_HEADS, CACHED + 64, HEAD_DIM), dtype=np.float32)[:, :CACHED]
    q = rng.standard_normal((1, HEADS, HEAD_DIM), dtype=np.float32).transpose(1, 0, 2)
    attended = np.empty((1, HEADS * HEAD_DIM), np.float32)
    shape = (0, HEADS, KV_HEADS, 1, CACHED, HEAD_DIM, 0.125, attended, 0)  # kv type F32, ..., window 0
    if hasattr(module, "MAX_THREADS"):
        attention_args = (q, keys, values, *shape)
    else:
        (qh, qr), (kh, kr) = (s // 4 for s in q.strides[:2]), (s // 4 for s in keys.strides[:2])
        attention_args = (q, qh, qr, keys, kh, kr, values, kh, kr, *shape)
    return {
        "linear": lambda: module.linear(weight._type, weight.data, D, D, x, 1, out),
        "rms_norm": lambda: module.rms_norm(x, norm, out, 1, D, 1e-5),
        "silu_mul": lambda: module.silu_mul(gate_up, hidden, 1, FFN),
        "attention": lambda: module.attention(*attention_args),
    }


def fastest_block_us(calls_by_build: dict, blocks: int) -> dict:
    """The fastest of `blocks` blocks of ~1 ms of calls (timed once to size them), builds alternating."""
    first = next(iter(calls_by_build.values()))
    start = time.perf_counter_ns()
    for _ in range(100):
        first()
    per_block = max(10, int(1e6 / max(1.0, (time.perf_counter_ns() - start) / 100)))
    best = {build: float("inf") for build in calls_by_build}
    for _ in range(blocks):
        for build, call in calls_by_build.items():
            start = time.perf_counter_ns()
            for _ in range(per_block):
                call()
            best[build] = min(best[build], (time.perf_counter_ns() - start) / per_block / 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another build of the _cpu extension")
    parser.add_argument("--blocks", type=int, default=400)
    args = parser.parse_args()
    builds = {"baseline": load_extension(args.baseline), "this checkout": _cpu}
    for module in builds.values():
        module.set_num_threads(1)
    calls = {build: decode_calls(module) for build, module in builds.items()}
    print("| call (1 thread, decode size) | baseline us | this checkout us | difference ns |")
    print("| --- | ---: | ---: | ---: |")
    for name in calls["baseline"]:
        best = fastest_block_us({build: calls[build][name] for build in builds}, args.blocks)
        base, this = best["baseline"], best["this checkout"]
        print(f"| {name} | {base:.3f} | {this:.3f} | {1000 * (this - base):+.0f} |")


if __name__ == "__main__":
    main()
