"""`deeproots bench`: llama-bench-style throughput of prefill (ppN) and decode (tgN).

Engines run alternately, repetition by repetition, in one process with the same prompt tokens, so
their ratio is measured under the same conditions. Only forward passes are timed (no sampling), as
llama-bench does: ppN runs N prompt tokens as one batch from an empty cache; tgN runs N single-token
steps from an empty cache. Each row also says how near the machine's bound it runs (`row_limit`): decode's bytes
read per second against the measured read bandwidth, prefill's integer operations per second against the int8 rate
measured in the same run (kernels/int8_rate.py; the nominal peak where no probe exists: deeproots/limits.py, which
also counts both from the file).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .errors import DeeprootsError
from .kernels import amx_enabled, set_amx
from .limits import Traffic
from .transformers_gguf import shared_parse


class Engine(Protocol):
    name: str
    kv_type: str  # of its KV cache: what a decode step reads besides the weights

    def prefill(self, tokens: list[int]) -> None: ...

    def decode(self, tokens: list[int]) -> None: ...


class DeeprootsEngine:
    def __init__(self, model, kv_type: str | None = None, amx: bool = True):
        """`kv_type` overrides the model's KV cache type (the weights are shared); amx=False runs every product on
        the VNNI path (kernels.set_amx), switched for this engine's runs only."""
        backend = f" ({model.backend})" if model.backend != "cpu" else ""  # reference or cuda
        parallel = f" (tp {model.cluster.group.world_size})" if model.cluster else ""
        self.name = "deeproots" + backend + (f" ({kv_type} KV)" if kv_type else "") + parallel \
            + ("" if amx else " (no AMX)")
        self.kv_type = kv_type or model.kv_type
        self.net = model.net
        self.cache = model.new_cache(kv_type=kv_type)
        self.amx = amx

    def prefill(self, tokens: list[int]) -> None:
        self.cache.truncate(0)
        with amx_switched(self.amx):
            self.net.forward(np.asarray(tokens, dtype=np.int64), self.cache)

    def decode(self, tokens: list[int]) -> None:
        self.cache.truncate(0)
        with amx_switched(self.amx):
            for token in tokens:
                self.net.forward(np.array([token], dtype=np.int64), self.cache)


@contextmanager
def amx_switched(amx: bool):
    """AMX off for the block when amx is False (else as it was), restored after."""
    was = amx_enabled()
    if not amx:
        set_amx(False)
    try:
        yield
    finally:
        if was and not amx:
            set_amx(True)


class LlamaCppEngine:
    """llama.cpp through llama-cpp-python (`pip install deeproots[bench]`), on the same GGUF file."""

    name = "llama.cpp"
    kv_type = "f16"  # llama.cpp's default cache type

    def __init__(self, path: str, context: int, threads: int):
        try:
            import llama_cpp
        except ImportError:
            raise DeeprootsError("--vs llama.cpp needs llama-cpp-python: pip install 'deeproots[bench]'") from None
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=512,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)

    def prefill(self, tokens: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(tokens)

    def decode(self, tokens: list[int]) -> None:
        self.llm.reset()
        for token in tokens:
            self.llm.eval([token])


class TransformersEngine:
    """HF transformers loading the same GGUF (dequantized to float32)."""

    name = "transformers"
    kv_type = "f32"  # its cache holds the activations' dtype

    def __init__(self, path):
        try:  # only this comparison needs PyTorch
            import torch
            import transformers
        except ImportError:
            raise DeeprootsError("--vs transformers needs torch and transformers: pip install 'deeproots[test]'") \
                from None

        path = Path(path)
        self.torch = torch
        with shared_parse(path):  # config and weights from one parse of the file
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()

    def prefill(self, tokens: list[int]) -> None:
        with self.torch.inference_mode():
            self.model(self.torch.tensor([tokens]), use_cache=True)

    def decode(self, tokens: list[int]) -> None:
        past = None
        with self.torch.inference_mode():
            for token in tokens:
                past = self.model(self.torch.tensor([[token]]), past_key_values=past, use_cache=True).past_key_values


@dataclass
class Result:
    engine: str
    test: str  # "pp512" / "tg128"
    tokens_per_second: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_second)

    @property
    def std(self) -> float:
        return statistics.stdev(self.tokens_per_second) if len(self.tokens_per_second) > 1 else 0.0


def benchmark_tokens(vocab_size: int, n_tokens: int) -> list[int]:
    """Random token ids (as llama-bench uses), the same for every engine and every run."""
    return np.random.default_rng(0).integers(vocab_size, size=n_tokens).tolist()


def run_benchmark(engines: Sequence[Engine], tokens: list[int], n_prompt: int, n_gen: int, repetitions: int,
                  progress: Callable[[str], None] = lambda _: None,
                  after_repetition: Callable[[str], None] = lambda test: None) -> list[Result]:
    """Time every engine on ppN and tgN, alternating engines within each repetition (after one warm-up).
    `after_repetition(test)` runs after each repetition of all the engines ("pp512", "tg128"): `deeproots bench`
    probes the machine's bound there (int8 rate, read bandwidth), so it is measured among the runs it bounds."""
    tests = []
    if n_prompt:
        tests.append((f"pp{n_prompt}", lambda e: e.prefill(tokens[:n_prompt]), n_prompt))
    if n_gen:
        tests.append((f"tg{n_gen}", lambda e: e.decode(tokens[:n_gen]), n_gen))
    results = {(e.name, name): Result(e.name, name) for e in engines for name, _, _ in tests}
    for name, run, n_tokens in tests:
        for engine in engines:
            run(engine)  # warm-up: page in weights, start thread pools
        for repetition in range(repetitions):
            for engine in engines:
                progress(f"{name} {engine.name} {repetition + 1}/{repetitions}")
                started = time.perf_counter()
                run(engine)
                results[engine.name, name].tokens_per_second.append(n_tokens / (time.perf_counter() - started))
            after_repetition(name)
    return list(results.values())


@dataclass(frozen=True)
class Limit:
    """A row's work per token and how near the machine's bound it runs."""
    per_token: float  # bytes read (tgN) or int8 operations (ppN) per token
    per_second: float  # per_token x the row's mean tokens/s
    fraction: float | None  # of the measured read bandwidth (tgN) or int8 rate (ppN); None: bound unknown


def row_limit(result: Result, kv_type: str, traffic: Traffic, bandwidth_gbs: float,
              peak_ops_per_second: float | None) -> Limit:
    n_tokens = int(result.test[2:])
    if result.test.startswith("tg"):
        per_token = traffic.decode_bytes_per_token(n_tokens, kv_type)
        bound = bandwidth_gbs * 1e9
    else:
        per_token = traffic.prefill_ops_per_token(n_tokens)
        bound = peak_ops_per_second
    per_second = per_token * result.mean
    return Limit(per_token, per_second, per_second / bound if bound else None)
