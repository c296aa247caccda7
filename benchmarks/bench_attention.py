"""Side-by-side timings of deeproots' attention kernel vs torch's scaled_dot_product_attention.

    python benchmarks/bench_attention.py [--repeats 200] [--threads 2] [--dtype float32|float16]

Shapes are the default model's (SmolLM2-135M: 9 query heads, 3 kv heads, head_dim 64). Decode (T=1) at L = 16,
256, 2048 and prefill (T=512, L=512). K and V are views into a cache preallocated for 4096 positions, as in
deeproots/cache/kv.py. Both sides produce what the output projection takes, (T, n_heads * head_dim): the kernel
writes it into a preallocated `out`; SDPA's (n_heads, T, D) result is transposed and made contiguous, as
models/llama.py does. Medians in microseconds, each side in one process with the same threads.
"""

import argparse
import math

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
    dtype = getattr(torch, args.dtype)
    scale = 1.0 / math.sqrt(HEAD_DIM)
    torch.manual_seed(0)
    keys = torch.randn(N_KV_HEADS, CACHE, HEAD_DIM).to(dtype)
    values = torch.randn(N_KV_HEADS, CACHE, HEAD_DIM).to(dtype)
    print(f"{N_HEADS} heads / {N_KV_HEADS} kv heads, head_dim {HEAD_DIM}, {args.dtype} KV, {args.threads} threads; "
          "median us per call")
    print(f"{'case':<22}{'deeproots':>12}{'torch SDPA':>12}{'speedup':>9}")
    for T, L in CASES:
        q = torch.randn(T, N_HEADS, HEAD_DIM).transpose(0, 1)  # (n_heads, T, D), as the model's view of q
        k, v = keys[:, :L], values[:, :L]
        out = torch.empty(T, N_HEADS * HEAD_DIM)
        ours = median_us(lambda: cached_attention(q, k, v, scale, out), args.repeats)
        # SDPA needs one dtype throughout: an f16 cache is converted per call, as a caller would have to.
        theirs = median_us(lambda: sdpa(q, k.float(), v.float(), scale), args.repeats)
        name = "decode" if T == 1 else "prefill"
        print(f"{f'{name} T={T} L={L}':<22}{ours:>12.1f}{theirs:>12.1f}{theirs / ours:>8.1f}x")


if __name__ == "__main__":
    main()
