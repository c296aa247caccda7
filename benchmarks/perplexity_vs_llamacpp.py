"""Perplexity of the same GGUF through deeproots (fast and reference paths) and llama.cpp, on the same tokens.

    python benchmarks/perplexity_vs_llamacpp.py TEXT_FILE [--ctx 512] [--max-chars N]

Chunking as llama-perplexity and `deeproots perplexity`: chunks of --ctx tokens, the second half scored.
llama.cpp runs through llama-cpp-python (pip install 'deeproots[bench]') with logits for every position.
"""

import argparse
import math
from pathlib import Path

import numpy as np

import deeproots
from deeproots.perplexity import chunk_nlls, summarize, token_nlls


def llama_cpp_perplexity(path: Path, ids: list[int], context: int) -> tuple[float, int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, logits_all=True, verbose=False)
    nlls = []
    for start in range(0, len(ids) - context + 1, context):
        chunk = ids[start:start + context]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:context], dtype=np.float64)  # (context, vocab)
        nlls.append(token_nlls(logits[context // 2:-1], chunk[context // 2 + 1:]))
    values = np.concatenate(nlls)
    return math.exp(values.mean()), len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", type=Path)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--max-chars", type=int, default=None)
    args = parser.parse_args()
    text = args.text.read_text(encoding="utf-8", errors="replace")[:args.max_chars]
    fast = deeproots.load(args.model, context=args.ctx)
    print(f"{len(fast.tokenize(text))} tokens of text, chunks of {args.ctx}")
    for name, model in (("deeproots fast (int8 activations, f16 KV)", fast),
                        ("deeproots fast, f32 KV", deeproots.load(args.model, context=args.ctx, kv_type="f32")),
                        ("deeproots reference (float32)", deeproots.load(args.model, context=args.ctx, reference=True))):
        result = summarize(list(chunk_nlls(model, text, args.ctx)))
        print(f"{name:<44} ppl {result.perplexity:.4f} ± {result.stderr:.4f} over {result.n_scored} tokens")
    # llama.cpp gets exactly the ids our chunking scores (the model adds no BOS).
    ppl, n = llama_cpp_perplexity(fast.path, fast.tokenize(text, add_bos=False), args.ctx)
    print(f"{'llama.cpp (llama-cpp-python)':<44} ppl {ppl:.4f} over {n} tokens")


if __name__ == "__main__":
    main()
