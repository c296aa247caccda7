"""Projected decode tokens/s of tensor parallelism over H hosts, from measured inputs (docs/benchmarks.md):

    t(H) = t1 / H  +  C * (l0 + (H - 1) * rtt / 2)  +  B * (H - 1) / H / bandwidth

t1: one host's decode time per token; C: collectives per token (exact: 4 per layer + 7; sum: 2 per layer + 7, the
7 being the step's and the logits' broadcasts and the logits gather); l0: one collective's software cost (measured
by bench_tp_collectives.py); rtt: the link's round trip (gloo's ring takes H - 1 hops); B: the float32 bytes a
host receives per token at H = 2 (exact: every layer's gathers of the attention output (n_heads * head_dim), the
two projections' rows (2 * d_model) and the hidden units (ffn_dim), plus the logits; sum: two ring all-reduces of
d_model per layer, 2 * 2 * d_model floats, plus the logits).

    python benchmarks/project_tp.py --t1-8b 0.94 --l0-us 270
"""

from __future__ import annotations

import argparse

SHAPES = {  # n_layers, d_model, n_heads * head_dim, ffn_dim, vocab, Q4_K_M weight bytes
    "8B": (32, 4096, 4096, 14336, 128256, 4.92e9),
    "70B": (80, 8192, 8192, 28672, 128256, 42.5e9),
}
LINKS = {"1 GbE": (125e6, 200e-6), "10 GbE": (1.25e9, 50e-6)}  # bytes/s, round trip


def per_token(shape: str, reduction: str) -> tuple[int, float]:
    """(collectives, bytes received by a host at H -> infinity, i.e. times (H - 1) / H) per decoded token."""
    layers, d, attention, ffn, vocab, _ = SHAPES[shape]
    if reduction == "exact":
        return 4 * layers + 7, 4 * (layers * (attention + 2 * d + ffn) + vocab)
    return 2 * layers + 7, 4 * (layers * 4 * d + vocab)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--t1-8b", type=float, required=True, help="one host's 8B decode seconds per token")
    parser.add_argument("--l0-us", type=float, required=True, help="one collective's software cost, microseconds")
    args = parser.parse_args()
    print("| model | reduction | link | collectives/token | MB/token (H=2) | " +
          " | ".join(f"H={h} tok/s" for h in (1, 2, 4, 8)) + " |")
    print("|---" * 9 + "|")
    for shape in SHAPES:
        t1 = args.t1_8b * SHAPES[shape][5] / SHAPES["8B"][5]  # decode is bound by the weight bytes read
        for reduction in ("exact", "sum"):
            collectives, received = per_token(shape, reduction)
            for link, (bandwidth, rtt) in LINKS.items():
                speeds = []
                for hosts in (1, 2, 4, 8):
                    t = t1 / hosts
                    if hosts > 1:
                        t += collectives * (args.l0_us * 1e-6 + (hosts - 1) * rtt / 2)
                        t += received * (hosts - 1) / hosts / bandwidth
                    speeds.append(1 / t)
                print(f"| {shape} | {reduction} | {link} | {collectives} | {received / 2 / 1e6:.2f} | " +
                      " | ".join(f"{s:.2f}" for s in speeds) + " |")


if __name__ == "__main__":
    main()
