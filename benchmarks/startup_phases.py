"""Where `deeproots run`'s start-up goes: the steps of a model load timed one after another, in one process.

    python benchmarks/startup_phases.py [-m MODEL] [--runs 5]

Each run is a fresh interpreter (imports are part of the start), which replays what `Model.__init__` does in
the same order: open the file, read the tokenizer, build its Rust backend, take the weights (from the packed
cache when it holds them), allocate the KV cache and run the first token. Prints milliseconds per step.
"""

import argparse
import subprocess
import sys

STEPS = r'''
import gc, sys, time
gc.disable()  # as the CLI loads
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import numpy as np
mark("import numpy")
import deeproots.cli, deeproots.model
from deeproots.backends.cpu import CPUBackend
from deeproots.cache.kv import KVLayout
from deeproots.cache.packed import PackedCache
from deeproots.config import config_from_gguf
from deeproots.model_file import open_model_file
from deeproots.models.registry import model_class
from deeproots.models.weights import GGUFWeights
from deeproots.store import ModelStore
from deeproots.tokenizer import ChatTemplate, Tokenizer
mark("import deeproots")
path = ModelStore().resolve(sys.argv[1], pull=False)
file = open_model_file(path)
mark("open file")
tokenizer = Tokenizer.from_gguf_metadata(file.metadata)
config = config_from_gguf(file.metadata, tokenizer.vocab_size)
ChatTemplate.from_gguf_metadata(file.metadata, tokenizer)
mark("tokenizer: vocabulary, merges, template")
tokenizer.build()
mark("tokenizer: Rust backend, token bytes")
backend = CPUBackend(PackedCache.for_file(path))
weights = GGUFWeights(file, backend)
net = model_class(str(file.metadata["general.architecture"]))(config, weights, 2048)
weights.finish()
mark("weights")
cache = backend.kv_cache(KVLayout(config.n_layers, config.n_kv_heads, config.head_dim), 2048)
net.forward(np.asarray(tokenizer.encode("The three primary colors are"), dtype=np.int64), cache)
mark("KV cache, first token")
print(" ".join(f"{1e3 * (t - marks[i][1]):.0f}" for i, (_, t) in enumerate(marks[1:])))
print("|".join(name for name, _ in marks[1:]))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", STEPS, args.model], capture_output=True, text=True, check=True)
        times, names = out.stdout.strip().splitlines()
        rows.append([int(value) for value in times.split()])
    for index, name in enumerate(names.split("|")):
        print(f"{name:<40} " + " ".join(f"{row[index]:>5}" for row in rows) + " ms")
    print(f"{'total':<40} " + " ".join(f"{sum(row):>5}" for row in rows) + " ms")


if __name__ == "__main__":
    main()
