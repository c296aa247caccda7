"""The CUDA backend on a real GPU, in one run that writes OUTDIR/gpu_check.json (benchmarks/gpu_check.sh runs it).

Sections, each recorded as it finishes (a section that fails records its error; one that would pass the time budget
is skipped and says so):
- env: the GPU, torch, triton;
- tests: tests/cuda on the GPU (DEEPROOTS_TEST_DEVICE=cuda: the same tests, compiled kernels, no interpreter);
- hbm: the roofline, a device-to-device copy (bytes read + written per second);
- logits: whole-model logits on the device against the CPU reference backend (top-1 agreement, max |diff|) for the
  real models in the store (SmolLM2 135M, Gemma 3 270M, when carried there: docs/gpu.md);
- bench: pp512 / tg128 of deeproots --device cuda (deeproots.bench's engines and its alternating runner), with and
  without its CUDA graphs, beside HF transformers (bf16, static cache, torch.compile) on the same shapes, for the
  real models and synthetic Llama-3.2-1B / Llama-3-8B files (benchmarks/synthetic_models.py), with tg's share of
  the HBM roofline;
- served (after the real models' benches): the engine (what `deeproots serve` runs, without HTTP: the GPU machine
  has no fastapi) on the device, 8 concurrent greedy requests of SmolLM2, with and without CUDA graphs (its pure
  decode steps are graph replays).

    python benchmarks/gpu_check.py OUTDIR [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the target (8B Q4_K_M) early: later sections are the first the time budget skips
SYNTHETIC = [("llama-3.2-1b", "q4_k_m"), ("llama-3-8b", "q4_k_m"), ("llama-3.2-1b", "q4_0"), ("llama-3-8b", "q4_0"),
             ("llama-3.2-1b", "q8_0"), ("llama-3-8b", "q8_0")]
REAL = ("smollm2-135m", "gemma3-270m")
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
          "movable metal type, oil-based ink and a wooden screw press. Within fifty years, presses were at work in "
          "more than two hundred European cities, and the price of books fell sharply.")


class Report:
    def __init__(self, out: Path, budget: float):
        self.path, self.data = out / "gpu_check.json", {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, needs: float, run) -> None:
        """Run `run()` into data[name] if `needs` seconds are left, recording its error instead if it fails."""
        started = time.monotonic()
        if self.left() < needs:
            self.data[name] = {"skipped": f"{self.left():.0f} s left of the budget, {needs:.0f} s needed"}
        else:
            try:
                self.data[name] = run()
            except Exception as error:  # a failed section is a finding: record it and go on
                self.data[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        if isinstance(self.data[name], dict):
            self.data[name]["seconds"] = round(time.monotonic() - started, 1)
        free_device_memory()
        self.path.write_text(json.dumps(self.data, indent=2))
        print(f"[gpu_check] {name}: {time.monotonic() - started:.1f} s", flush=True)


def free_device_memory() -> None:
    """What a section's models held goes back before the next one loads its own."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def env() -> dict:
    import torch
    import triton

    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton.__version__, "python": sys.version.split()[0]}


def tests(timeout: float) -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15", "tests/cuda"]
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "DEEPROOTS_TEST_DEVICE": "cuda"})
    except subprocess.TimeoutExpired as expired:  # what ran is still a finding
        out = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else expired.stdout
        return {"timed_out_after_s": timeout, "tail": (out or "")[-6000:]}
    return {"returncode": result.returncode, "tail": result.stdout[-6000:] + result.stderr[-2000:]}


def hbm() -> dict:
    """Device-to-device copy of 4 GiB, ten timed after three warm-ups: (read + written bytes) / time."""
    import torch

    n = 2**32
    source, target = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    del source, target
    torch.cuda.empty_cache()
    return {"bytes_per_second": 2 * n / float(np.median(times)), "median_s": float(np.median(times))}


def store_path(name: str) -> Path | None:
    from deeproots.store import ModelStore

    try:
        return ModelStore().resolve(name, pull=False)
    except Exception:
        return None


def logits(name: str) -> dict:
    from deeproots.loader import load_model_file

    path = store_path(name)
    if path is None:
        return {"skipped": f"{name} is not in the store (docs/gpu.md: carry it)"}
    reference = load_model_file(path, backend="reference", context=256)
    device = load_model_file(path, backend="cuda", context=256)
    ids = np.asarray(reference.tokenizer.encode(PROMPT), dtype=np.int64)
    expected = reference.net.forward(ids, reference.new_cache(256), all_logits=True)
    cache = device.new_cache(256)  # prefill all but 8 tokens, then decode them one at a time
    ours = np.concatenate([device.net.forward(ids[:-8], cache, all_logits=True),
                           *[device.net.forward(ids[i:i + 1], cache) for i in range(len(ids) - 8, len(ids))]])
    return {"tokens": len(ids), "max_abs_diff": float(np.abs(ours - expected).max()),
            "top1_agreement": float((ours.argmax(-1) == expected.argmax(-1)).mean()),
            "logit_range": float(np.abs(expected).max())}


def served(name: str, concurrency: int = 8, new_tokens: int = 64, rounds: int = 2) -> dict:
    """Generated tokens per second of wall time of `concurrency` greedy requests (~55-token prompts, `new_tokens`
    each) admitted in one step, with graphs on and off alternately, after one warm-up round (which also fills the
    prefix cache, so every timed round takes the same prefixes from it)."""
    from deeproots.engine import Engine, EngineConfig
    from deeproots.loader import load_model_file

    path = store_path(name)
    if path is None:
        return {"skipped": f"{name} is not in the store (docs/gpu.md: carry it)"}
    loaded = load_model_file(path, backend="cuda", context=1024)
    graphs = loaded.backend.graphs
    prompts = [loaded.tokenizer.encode(f"{index}. {PROMPT}") for index in range(concurrency)]
    engine = Engine(loaded, EngineConfig(max_running=concurrency)).start()
    rates: dict[str, list[float]] = {"graphs": [], "eager": []}
    try:
        served_round(engine, prompts, new_tokens)
        for _ in range(rounds):
            for mode in rates:
                graphs.enabled = mode == "graphs"
                generated, seconds = served_round(engine, prompts, new_tokens)
                rates[mode].append(generated / seconds)
    finally:
        engine.stop()
        graphs.enabled = True
    return {"concurrency": concurrency, "new_tokens": new_tokens, "tokens_per_second": rates,
            "median": {mode: float(np.median(values)) for mode, values in rates.items()},
            "graph_route": dict(graphs.route)}


def served_round(engine, prompts: list[list[int]], new_tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) of the prompts submitted together (from the engine thread: one step admits all)."""
    import threading

    from deeproots.engine import GenerationRequest
    from deeproots.sampling import SamplingParams

    finished, lock, counts = threading.Event(), threading.Lock(), {"tokens": 0, "open": len(prompts)}

    def on_event(event) -> None:
        with lock:
            ended = isinstance(event, Exception) or event.finish_reason is not None
            counts["tokens"] += not isinstance(event, Exception)
            counts["open"] -= ended
            if not counts["open"]:
                finished.set()
    requests = [GenerationRequest(ids, SamplingParams(temperature=0.0), new_tokens, on_event) for ids in prompts]
    started = time.perf_counter()
    engine.call(lambda: [engine.submit(request) for request in requests]).result(60)
    if not finished.wait(120):
        raise TimeoutError("the engine did not finish a round in 120 s")
    return counts["tokens"], time.perf_counter() - started


class EagerDecode:
    """deeproots on the same loaded model with its CUDA graphs off: every decode step launched from Python."""

    def __init__(self, model):
        from deeproots.bench import DeeprootsEngine

        self.inner, self.graphs = DeeprootsEngine(model), model.loaded.backend.graphs
        self.name = self.inner.name + " (no CUDA graphs)"

    def prefill(self, tokens: list[int]) -> None:
        self.inner.prefill(tokens)

    def decode(self, tokens: list[int]) -> None:
        self.graphs.enabled = False
        try:
            self.inner.decode(tokens)
        finally:
            self.graphs.enabled = True


class TransformersStatic:
    """HF transformers on the same shape (config from the file's metadata), random bf16 weights on the GPU: prefill
    eager, decode by generate() with a static cache and torch.compile'd forward."""

    name = "transformers (bf16, static, compiled)"

    def __init__(self, config):
        import torch
        import transformers

        c = config
        hf_config = transformers.LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim,
            rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, max_position_embeddings=4096, tie_word_embeddings=False)
        with torch.device("cuda"):
            self.model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
        self.eager = self.model.forward  # prefill: one call per prompt, eager (SDPA)
        # HF's documented fast decode (docs "LLM inference optimization"): static cache, compiled forward
        self.model.forward = torch.compile(self.model.forward, mode="reduce-overhead", fullgraph=True)
        self.torch = torch

    def prefill(self, tokens: list[int]) -> None:
        with self.torch.inference_mode():
            self.eager(self.torch.tensor([tokens], device="cuda"), use_cache=False)
        self.torch.cuda.synchronize()

    def decode(self, tokens: list[int]) -> None:
        with self.torch.inference_mode():
            self.model.generate(self.torch.tensor([tokens[:1]], device="cuda"), max_new_tokens=len(tokens),
                                min_new_tokens=len(tokens), do_sample=False, cache_implementation="static")
        self.torch.cuda.synchronize()


def bench(path: Path, hbm_rate: float | None, with_transformers: bool, repetitions: int = 3) -> dict:
    import deeproots
    from deeproots.bench import DeeprootsEngine, benchmark_tokens, run_benchmark

    model = deeproots.load(path, device="cuda", context=1024, pull=False)
    engines = [DeeprootsEngine(model), EagerDecode(model)]
    if with_transformers and model.config.architecture == "llama":
        engines.append(TransformersStatic(model.config))
    results = run_benchmark(engines, benchmark_tokens(model.config.vocab_size, 512), 512, 128, repetitions)
    file_bytes = path.stat().st_size
    report = {"file": str(path), "file_bytes": file_bytes,
              "results": [{"engine": r.engine, "test": r.test, "tokens_per_second": r.tokens_per_second,
                           "median": float(np.median(r.tokens_per_second))} for r in results]}
    ours = {r.test: float(np.median(r.tokens_per_second)) for r in results if r.engine == engines[0].name}
    if hbm_rate:  # every weight byte read once per decoded token
        report["tg_share_of_hbm_roofline"] = ours["tg128"] * file_bytes / hbm_rate
    report["graph_captures"] = len(model.loaded.backend.graphs.captured)
    if len(engines) > 2:
        theirs = {r.test: float(np.median(r.tokens_per_second)) for r in results if r.engine == engines[2].name}
        report["deeproots_over_transformers"] = {test: ours[test] / theirs[test] for test in ours}
    return report


def synthetic(shape: str, file_type: str, folder: Path, hbm_rate: float | None) -> dict:
    path = folder / f"{shape}-{file_type}.gguf"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synthetic_models.py"), shape, file_type, str(path)],
                   check=True, capture_output=True, timeout=240)
    try:
        return bench(path, hbm_rate, with_transformers=file_type == "q4_k_m")
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all sections (default 420)")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    report = Report(args.outdir, args.budget)
    report.section("env", 0, env)
    report.section("tests", 60, lambda: tests(min(150.0, report.left() - 200)))
    report.section("hbm", 10, hbm)
    rate = report.data["hbm"].get("bytes_per_second")
    for name in REAL:
        report.section(f"logits {name}", 30, lambda name=name: logits(name))
    for name in REAL:
        path = store_path(name)
        report.section(f"bench {name}", 30, lambda path=path: bench(path, rate, with_transformers=False)
                       if path else {"skipped": "not in the store"})
    report.section(f"served {REAL[0]}", 20, lambda: served(REAL[0]))  # the smallest: ~10 s
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "deeproots-gpu-check"
    folder.mkdir(exist_ok=True)
    for shape, file_type in SYNTHETIC:
        report.section(f"bench {shape} {file_type}", 150 if "8b" in shape else 60,
                       lambda shape=shape, file_type=file_type: synthetic(shape, file_type, folder, rate))
    print(json.dumps({k: v for k, v in report.data.items() if k != "tests"}, indent=2)[:6000])


if __name__ == "__main__":
    main()
