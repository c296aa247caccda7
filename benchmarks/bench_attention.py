"""Side-by-side timings of deeproots' attention kernel vs torch's scaled_dot_product_attention.

    python benchmarks/bench_attention.py [--repeats 200] [--threads 2] [--dtype float32|float16]

Shapes are the default model's (SmolLM2-135M: 9 query heads, 3 kv heads, head_dim 64). Decode (T=1) at L = 16,
256, 2048 and prefill (T=512, L=512). K and V are views into a numpy cache preallocated for 4096 positions, as in
deeproots/cache/kv.py; q is the transposed (n_heads, T, D) view of a numpy (T, n_heads, D) array; SDPA gets the same
arrays through torch.from_numpy. Both sides produce what the output projection takes, (T, n_heads * head_dim): the
kernel writes it into a preallocated numpy `out`; SDPA's (n_heads, T, D) result is transposed and made contiguous,
as backends/formulas.py's causal_attention does. Medians in microseconds, each side in one process with the same threads.
"""

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from timing import median_us

from deeproots.kernels import cached_attention, set_num_threads

N_HEADS, N_KV_HEADS, HEAD_DIM, CACHE = 9, 3, 64, 4096
CASES = [(1, 16), (1, 256), (1, 2048), (512, 512)]  # (T, L)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    T, L = q.shape[1], k.shape[1]
    mask = None if T == 1 else torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return out.transpose(0, 1).reshape(T, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="KV cache dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_num_threads(args.threads)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((N_KV_HEADS, CACHE, HEAD_DIM), dtype=np.float32).astype(args.dtype)
    values = rng.standard_normal((N_KV_HEADS, CACHE, HEAD_DIM), dtype=np.float32).astype(args.dtype)
    print(f"{N_HEADS} heads / {N_KV_HEADS} kv heads, head_dim {HEAD_DIM}, {args.dtype} KV, {args.threads} threads; "
          "median us per call")
    print(f"{'case':<22}{'deeproots':>12}{'torch SDPA':>12}{'speedup':>9}")
    for T, L in CASES:
        q = rng.standard_normal((T, N_HEADS, HEAD_DIM), dtype=np.float32).transpose(1, 0, 2)  # the model's view
        k, v = keys[:, :L], values[:, :L]
        out = np.empty((T, N_HEADS * HEAD_DIM), np.float32)
        q_t, k_t, v_t = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v)  # the same memory, for torch
        ours = median_us(lambda: cached_attention(q, k, v, scale, out), args.repeats)
        # SDPA needs one dtype throughout: an f16 cache is converted per call, as a caller would have to.
        theirs = median_us(lambda: sdpa(q_t, k_t.float(), v_t.float(), scale), args.repeats)
        name = "decode" if T == 1 else "prefill"
        print(f"{f'{name} T={T} L={L}':<22}{ours:>12.1f}{theirs:>12.1f}{theirs / ours:>8.1f}x")


if __name__ == "__main__":
    main()
