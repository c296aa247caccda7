"""Side-by-side timings of deeproots' rms_norm, rotary_embedding_ and silu_mul vs the same formulas in torch (those
of backends/formulas.py, written with torch operations).

    python benchmarks/bench_elementwise.py [--repeats 2000] [--threads 2]

Shapes are the default model's (SmolLM2-135M: d_model 576, 9 query heads and 3 kv heads of head_dim 64, FFN 1536),
at decode (T=1) and prefill (T=512). RoPE rotates the q and k heads of a fused qkv product's output in place (the
kernel takes the (T, 12, 64) view in one call; the torch formula rotates q and k separately, as two calls, in place
through copy_). The kernels take numpy float32 arrays (rms_norm and silu_mul write into preallocated outputs); the
torch formulas take the same arrays through torch.from_numpy and allocate their outputs. RoPE tables are
layers.RotaryEmbedding's. Medians in microseconds, each side in one process with the same threads.
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from timing import median_us

from deeproots.kernels import rms_norm, rotary_embedding_, set_num_threads, silu_mul
from deeproots.backends.formulas import RotaryEmbedding

D_MODEL, N_HEADS, N_KV_HEADS, HEAD_DIM, FFN, POSITIONS, EPS = 576, 9, 3, 64, 1536, 8192, 1e-5


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def torch_rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int) -> None:
    """layers.RotaryEmbedding's interleaved formula on x (T, n_heads, D), in place."""
    T = x.shape[0]
    c, s = cos[start:start + T, None], sin[start:start + T, None]
    first, second = x[..., 0::2], x[..., 1::2]
    x.copy_(torch.stack((first * c - second * s, first * s + second * c), dim=-1).flatten(-2))


def torch_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    rope = RotaryEmbedding(HEAD_DIM, 10000.0, POSITIONS)
    cos, sin = rope.cos, rope.sin  # (POSITIONS, HEAD_DIM / 2) float32
    cos_t, sin_t = torch.from_numpy(cos), torch.from_numpy(sin)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(D_MODEL, dtype=np.float32)
    weight_t = torch.from_numpy(weight)
    print(f"d_model {D_MODEL}, {N_HEADS}/{N_KV_HEADS} heads of {HEAD_DIM}, FFN {FFN}, {args.threads} threads; "
          "median us per call")
    print(f"{'case':<24}{'deeproots':>12}{'torch':>12}{'speedup':>9}")
    with torch.inference_mode():
        for T in (1, 512):
            repeats = args.repeats if T == 1 else max(20, args.repeats // 20)
            x, out = rng.standard_normal((T, D_MODEL), dtype=np.float32), np.empty((T, D_MODEL), np.float32)
            qk_heads = N_HEADS + N_KV_HEADS
            qkv = rng.standard_normal((T, (N_HEADS + 2 * N_KV_HEADS) * HEAD_DIM), dtype=np.float32)
            heads = qkv.reshape(T, N_HEADS + 2 * N_KV_HEADS, HEAD_DIM)  # (T, 15, 64), a view
            qk = heads[:, :qk_heads]  # views, made once
            q_t, k_t = torch.from_numpy(heads[:, :N_HEADS]), torch.from_numpy(heads[:, N_HEADS:qk_heads])
            gate_up, hidden = rng.standard_normal((T, 2 * FFN), dtype=np.float32), np.empty((T, FFN), np.float32)
            x_t, gate_up_t = torch.from_numpy(x), torch.from_numpy(gate_up)
            start = 100
            cases = [
                ("rms_norm", lambda: rms_norm(x, weight, EPS, out), lambda: torch_rms_norm(x_t, weight_t)),
                ("rope q+k", lambda: rotary_embedding_(qk, cos, sin, start, HEAD_DIM, True),
                 lambda: (torch_rotate_(q_t, cos_t, sin_t, start), torch_rotate_(k_t, cos_t, sin_t, start))),
                ("silu_mul", lambda: silu_mul(gate_up, hidden), lambda: torch_silu_mul(gate_up_t)),
            ]
            for name, ours, theirs in cases:
                a, b = median_us(ours, repeats), median_us(theirs, repeats)
                print(f"{f'{name} T={T}':<24}{a:>12.2f}{b:>12.2f}{b / a:>8.1f}x")


if __name__ == "__main__":
    main()
