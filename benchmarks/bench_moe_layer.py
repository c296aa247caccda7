"""One OLMoE-1B-7B-shaped mixture-of-experts layer on the CPU backend, against a dense MLP of the same active bytes.

    python benchmarks/bench_moe_layer.py [--rounds 5] [--repeats 20] [--threads 2]

The layer has OLMoE-1B-7B's shapes (d_model 2048, 64 experts of width 1024, 8 per token) in Q4_0, written by our
GGUF writer with random blocks into a temporary file; the dense MLP is width 8 x 1024 = 8192, the bytes one token's
8 experts read. If a decode step reads only the chosen experts, the two cost about the same per token; a step that
read every expert would cost 8x (the MLP of width 65536). With 128 rows both sides do the same arithmetic (each row
through 8 x 1024 of width); the mixture spreads the rows over most experts, so the ratio is what grouping costs. The two sides alternate round by round in one process; medians in microseconds.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from synthetic_models import random_blocks
from timing import median_us

from deeproots.backends.cpu import CPUBackend
from deeproots.config import ExpertConfig, ModelConfig
from deeproots.formats.gguf import GGUFFile
from deeproots.formats.gguf_writer import GGUFWriter
from deeproots.kernels import set_num_threads
from deeproots.models.moe import MixtureOfExperts
from deeproots.models.weights import GGUFWeights
from deeproots.quant import GGMLType

D_MODEL, N_EXPERTS, TOP_K, EXPERT_FFN = 2048, 64, 8, 1024
Q4_0_BLOCK_VALUES, Q4_0_BLOCK_BYTES = 32, 18


def write_layer(path: Path) -> None:
    rng = np.random.default_rng(0)
    writer = GGUFWriter()
    writer.add("general.architecture", "olmoe")
    writer.add_tensor("blk.0.ffn_gate_inp.weight", rng.standard_normal((N_EXPERTS, D_MODEL), np.float32), GGMLType.F32)
    for name, (rows, width) in {"gate": (EXPERT_FFN, D_MODEL), "up": (EXPERT_FFN, D_MODEL),
                                "down": (D_MODEL, EXPERT_FFN)}.items():
        experts = random_blocks(rng, GGMLType.Q4_0, N_EXPERTS * rows * width)
        writer.add_tensor(f"blk.0.ffn_{name}_exps.weight", experts, GGMLType.Q4_0, (width, rows, N_EXPERTS))
        dense = (TOP_K * rows, width) if name != "down" else (rows, TOP_K * width)
        writer.add_tensor(f"blk.0.ffn_{name}.weight", random_blocks(rng, GGMLType.Q4_0, dense[0] * dense[1]),
                          GGMLType.Q4_0, dense[::-1])
    writer.write(path)


def config() -> ModelConfig:
    return ModelConfig(architecture="olmoe", n_layers=1, d_model=D_MODEL, n_heads=16, n_kv_heads=16, head_dim=128,
                       ffn_dim=EXPERT_FFN, vocab_size=50304, context_length=4096, norm_eps=1e-5, rope_theta=1e4,
                       rope_dim=128, experts=ExpertConfig(N_EXPERTS, TOP_K, EXPERT_FFN, None, False))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "olmoe-layer-q4_0.gguf"
        write_layer(path)
        weights = GGUFWeights(GGUFFile.open(path), CPUBackend())
        moe = MixtureOfExperts(config(), weights, "blk.0.")
        gate_up = weights.stacked_linear(["blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"], D_MODEL,
                                         [TOP_K * EXPERT_FFN] * 2)
        down = weights.linear("blk.0.ffn_down.weight", TOP_K * EXPERT_FFN, D_MODEL)

        def dense(h: np.ndarray) -> np.ndarray:
            return down(weights.primitives.silu_mul(gate_up(h)))

        rng = np.random.default_rng(1)
        active_bytes = TOP_K * 3 * EXPERT_FFN * D_MODEL * Q4_0_BLOCK_BYTES // Q4_0_BLOCK_VALUES
        print(f"active expert bytes per token: {active_bytes / 1e6:.1f} MB; threads {args.threads}")
        for rows in (1, 128):
            h = rng.standard_normal((rows, D_MODEL), np.float32)
            used = len(np.unique(moe.route(h)[0]))
            times = {"moe": [], "dense": []}
            for _ in range(args.rounds):
                times["moe"].append(median_us(lambda: moe(h), args.repeats))
                times["dense"].append(median_us(lambda: dense(h), args.repeats))
            moe_us, dense_us = (statistics.median(times[side]) for side in ("moe", "dense"))
            line = (f"{rows:4d} rows ({used:2d} experts used): moe {moe_us:9.0f} us, dense width "
                    f"{TOP_K * EXPERT_FFN} {dense_us:9.0f} us, ratio {moe_us / dense_us:.2f}")
            if rows == 1:
                line += f"; one token's active expert bytes read at {active_bytes / moe_us / 1e3:.1f} GB/s"
            print(line)

if __name__ == "__main__":
    main()
