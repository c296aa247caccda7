"""Choose `deeproots run`/`chat` sampling defaults by measurement: loops and natural endings on the default model.

    python benchmarks/chat_defaults.py [--model smollm2-135m] [--seeds 3] [--max-tokens 512]

For each candidate setting, every prompt below is answered with each seed (fixed: 0, 1, ...), through the chat
template as `deeproots run` does. Per answer it records whether the model ended it (an end token: "stop") or the
max-tokens limit did ("length"), and its repeated-4-gram rate: the share of the answer's word 4-grams that already
occurred earlier in the same answer (0 for text that never repeats itself; a "a story of roots, a story of the
earth, ..." loop scores near 1). An answer counts as a loop when that rate is above LOOP_RATE. The table (markdown)
is what docs/cli.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import time

import deeproots
from deeproots.sampling import SamplingParams

PROMPTS = [
    "Write a haiku about roots.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for learning a new language.",
    "What is the capital of France, and what is it known for?",
    "Write a short poem about the sea.",
    "How do I reverse a list in Python?",
    "Tell me a story about a fox and a crow.",
    "What are the health benefits of walking every day?",
]
LLAMA_CPP = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)  # the library's defaults
CANDIDATES = {
    "llama.cpp (repeat 1.0)": dict(LLAMA_CPP, repeat_penalty=1.0),
    "repeat 1.05": dict(LLAMA_CPP, repeat_penalty=1.05),
    "repeat 1.1 (Ollama)": dict(LLAMA_CPP, repeat_penalty=1.1),
    "repeat 1.15": dict(LLAMA_CPP, repeat_penalty=1.15),
    "repeat 1.2": dict(LLAMA_CPP, repeat_penalty=1.2),
    "repeat 1.1, temperature 0.6": dict(LLAMA_CPP, repeat_penalty=1.1, temperature=0.6),
}
LOOP_RATE = 0.25


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of the word n-grams of `text` that already occurred earlier in it (0 when it has none)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams) if grams else 0.0


def answer(model, prompt: str, params: SamplingParams, max_tokens: int) -> tuple[str, str, int]:
    """(text, finish reason, tokens) of one chat answer."""
    ids = model.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
    pieces, reason, n = [], None, 0
    for step in model.steps(ids, params, max_tokens=max_tokens):
        pieces.append(step.text)
        reason, n = step.finish_reason, n + 1
    return "".join(pieces), reason or "length", n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()
    model = deeproots.load(args.model, context=2048)
    print(f"{args.model}: {len(PROMPTS)} prompts x {args.seeds} seeds, max {args.max_tokens} tokens, "
          f"loop = repeated-4-gram rate > {LOOP_RATE}\n")
    print("| setting | ended by the model | hit max tokens | loops | mean repeated 4-grams | mean tokens |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, sampling in CANDIDATES.items():
        started = time.perf_counter()
        runs = [answer(model, prompt, SamplingParams(**sampling, seed=seed), args.max_tokens)
                for prompt in PROMPTS for seed in range(args.seeds)]
        rates = [repeated_ngram_rate(text) for text, _, _ in runs]
        total = len(runs)
        ended = sum(reason == "stop" for _, reason, _ in runs)
        print(f"| {label} | {ended}/{total} | {total - ended}/{total} | {sum(r > LOOP_RATE for r in rates)}/{total} "
              f"| {sum(rates) / total:.3f} | {sum(n for _, _, n in runs) / total:.0f} |", flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
