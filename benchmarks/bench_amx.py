"""AMX-INT8 against AVX-512 VNNI prefill products, alternating in one process on the same weights and tokens.

    python benchmarks/bench_amx.py                  # Llama-3.2-1B and Llama-3-8B matrix shapes, T = 512
    python benchmarks/bench_amx.py --tokens 16 64   # where AMX starts to pay (csrc/module.c's AMX_MIN_TOKENS)

Weights are random blocks (synthetic_models.random_blocks); each row is the median of alternating repetitions, as
integer operations per second (2 T K N / time) and the ratio AMX / VNNI. Both paths give the same bits (checked).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from deeproots.kernels import AMX_STATUS, amx_enabled, get_num_threads, pack_weight, quantized_linear, set_amx
from deeproots.quant import GGMLType
from synthetic_models import random_blocks

SHAPES = {  # (name, K, N): the dense matrices of one layer
    "llama-3.2-1b": [("attn_q", 2048, 2048), ("attn_kv", 2048, 512), ("ffn_up", 2048, 8192), ("ffn_down", 8192, 2048)],
    "llama-3-8b": [("attn_q", 4096, 4096), ("attn_kv", 4096, 1024), ("ffn_up", 4096, 14336),
                   ("ffn_down", 14336, 4096)],
}
TYPES = (GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q8_0)


def alternate(x: np.ndarray, weight, out: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median seconds of one product with AMX on, then off, alternating."""
    times = {True: [], False: []}
    for _ in range(repeats + 1):  # the first round warms caches and the thread pool
        for amx in (True, False):
            set_amx(amx)
            start = time.perf_counter()
            quantized_linear(x, weight, out=out)
            times[amx].append(time.perf_counter() - start)
    return statistics.median(times[True][1:]), statistics.median(times[False][1:])


def product(amx: bool, x: np.ndarray, weight) -> np.ndarray:
    set_amx(amx)
    return quantized_linear(x, weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=[512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if AMX_STATUS != "amx-int8":
        raise SystemExit(f"AMX is not usable here: {AMX_STATUS}")
    was = amx_enabled()
    rng = np.random.default_rng(0)
    print(f"{get_num_threads()} threads")
    print("| shape | matrix (K x N) | type | T | AMX Gop/s | VNNI Gop/s | AMX / VNNI |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    try:
        for shape in args.shapes:
            for name, k, n in SHAPES[shape]:
                for ggml_type in TYPES:
                    weight = pack_weight(random_blocks(rng, ggml_type, k * n), ggml_type, (k, n))
                    for t in args.tokens:
                        x = rng.standard_normal((t, k)).astype(np.float32)
                        out = np.empty((t, n), np.float32)
                        amx, vnni = alternate(x, weight, out, args.repeats)
                        if not np.array_equal(product(True, x, weight), product(False, x, weight)):
                            raise SystemExit(f"{shape} {name} {ggml_type.name} T={t}: AMX and VNNI differ")
                        ops = 2 * t * k * n
                        print(f"| {shape} | {name} ({k} x {n}) | {ggml_type.name} | {t} | {ops / amx / 1e9:.0f} "
                              f"| {ops / vnni / 1e9:.0f} | {vnni / amx:.2f}x |", flush=True)
    finally:
        set_amx(was)


if __name__ == "__main__":
    main()
