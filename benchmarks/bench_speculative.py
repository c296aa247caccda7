"""Speculative decoding against plain decoding, side by side: decode tokens/s on input-grounded and open-ended
prompts, alternating run by run in one process; medians.

    python benchmarks/bench_speculative.py [--rounds 5] [--max-tokens 128] [--draft-max 8] [--no-draft]

Modes per prompt, in turn every round (plain first in even rounds, second in odd ones): plain decoding, prompt lookup (the adaptive default of `--spec lookup`),
and, unless --no-draft, a draft model: the default model requantized to Q4_0 (--pure) as the draft, and to each
--draft-targets type as the model (`deeproots quantize` into a temporary folder), against plain decoding of that
model. Greedy (temperature 0), so every mode gives the same tokens (checked). One sampled row (temperature 0.8,
the llama.cpp defaults, seed = round) shows the lookup gain when sampling: there the two modes write different
texts (the same distribution, another random stream), so only the median over rounds means anything. Prints a
markdown table with the load average and the CPU model (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import deeproots
from deeproots.convert import quantize_file
from deeproots.generate import generate
from deeproots.sampling import SamplingParams
from deeproots.speculative import SpeculationConfig, Speculator
from deeproots.store import ModelStore

CODE = '''import json
from pathlib import Path


def load_settings(path):
    """Read the settings file and return a dictionary of its values."""
    text = Path(path).read_text()
    settings = json.loads(text)
    if "name" not in settings:
        raise ValueError("the settings need a name")
    return settings


def save_settings(path, settings):
    """Write the settings back, sorted, with an indent of two spaces."""
    Path(path).write_text(json.dumps(settings, indent=2, sort_keys=True))
'''
ARTICLE = ("The Amazon River in South America is the largest river by discharge volume of water in the world. "
           "It flows from the Andes Mountains in Peru to the Atlantic Ocean in Brazil. The river system covers "
           "about seven million square kilometres, and its basin holds the largest rainforest on Earth. More than "
           "three thousand species of fish have been found in the river, and new ones are still being described "
           "every year.")
GROUNDED = {
    "edit code": f"Rename the function load_settings to read_settings in this code. Show the whole code.\n\n{CODE}",
    "quote a text": f"{ARTICLE}\n\nQuote the sentences of the text above that talk about fish and about the "
                    "basin, word for word.",
}
OPEN_ENDED = {
    "story": "Write a short story about a dragon who learns to cook.",
    "explain": "Explain why the sky is blue.",
}


def decode_rate(model, ids, params, max_tokens, speculator) -> tuple[float, list[int]]:
    """Decode tokens/s (after the first token: prefill is the same for every mode) and the tokens."""
    tokens, first = [], None
    for step in generate(model.net, model.tokenizer, ids, model.new_cache(), params, max_tokens=max_tokens,
                         speculator=speculator):
        first = first or time.perf_counter()
        tokens.append(step.token_id)
    return (len(tokens) - 1) / (time.perf_counter() - first), tokens


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--draft-max", type=int, default=8)
    parser.add_argument("--no-draft", action="store_true")
    parser.add_argument("--draft-targets", default="q8_0,f16", help="model types the Q4_0 draft drafts for")
    args = parser.parse_args()
    path = ModelStore().resolve(args.model)
    model = deeproots.load(path, context=2048)
    folder = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    pairs = [("lookup", model, None)]
    if not args.no_draft:
        quantize_file(path, folder / "q4_0.gguf", "q4_0", pure=True, progress=False)
        for kind in args.draft_targets.split(","):
            quantize_file(path, folder / f"{kind}.gguf", kind, progress=False)
            target = deeproots.load(folder / f"{kind}.gguf", context=2048, speculation="draft",
                                    draft_model=folder / "q4_0.gguf", draft_max=args.draft_max)
            pairs.append((f"draft q4_0 -> {kind}", target, target.speculator.draft))
    rows = []
    print(f"load average before: {load_average()}")
    cases = [(kind, name, prompt, SamplingParams(temperature=0.0)) for kind, prompts in
             (("input-grounded", GROUNDED), ("open-ended", OPEN_ENDED)) for name, prompt in prompts.items()]
    cases.append(("input-grounded", "edit code, sampled (T 0.8)", GROUNDED["edit code"], SamplingParams()))
    for mode, runner, draft in pairs:
        for kind, name, prompt, params in (cases if draft is None else cases[:-1]):
            ids = runner.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True)
            plain_rates, spec_rates, speculator = [], [], None
            for round_index in range(args.rounds):  # alternating, in the order ABBA ABBA ... (no order bias)
                if not params.greedy:  # a seed per round, the same for both: the texts differ, the medians compare
                    params = replace(params, seed=round_index)
                speculator = Speculator(SpeculationConfig("draft" if draft else "lookup", args.draft_max), draft)
                runs = [(None, "plain"), (speculator, "spec")]
                measured = {label: decode_rate(runner, ids, params, args.max_tokens, spec)
                            for spec, label in (runs if round_index % 2 == 0 else runs[::-1])}
                (plain_rate, plain_tokens), (spec_rate, spec_tokens) = measured["plain"], measured["spec"]
                if params.greedy and spec_tokens != plain_tokens:
                    raise SystemExit(f"{mode} / {name}: the speculative tokens differ from plain decoding's")
                plain_rates.append(plain_rate)
                spec_rates.append(spec_rate)
            ratios = [s / p for s, p in zip(spec_rates, plain_rates)]
            rows.append((mode, kind, name, statistics.median(plain_rates), statistics.median(spec_rates),
                         statistics.median(ratios), speculator.accepted, speculator.rejected))
            print(f"{mode:<20} {name:<36} plain {rows[-1][3]:6.1f}  spec {rows[-1][4]:6.1f}  x{rows[-1][5]:.2f}",
                  flush=True)
    print(f"\nload average after: {load_average()}; CPU: {cpu_model()}; rounds: {args.rounds}; "
          f"max tokens: {args.max_tokens}; draft max: {args.draft_max}\n")
    print("| drafts | prompt | kind | plain t/s | speculative t/s | speedup (median of ratios) | drafts kept / "
          "rejected (last round) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for mode, kind, name, plain, spec, ratio, accepted, rejected in rows:
        print(f"| {mode} | {name} | {kind} | {plain:.1f} | {spec:.1f} | {ratio:.2f}x | {accepted} / {rejected} |")


if __name__ == "__main__":
    main()
