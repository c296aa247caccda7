"""`deeproots bench` and `deeproots perplexity` on the real model; perplexity checked against transformers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deeproots.perplexity import chunk_nlls, summarize

pytestmark = pytest.mark.slow  # whole-model bench and perplexity runs

TEXT_FILE = Path(__file__).resolve().parents[2] / "README.md"  # a text inside the repo: every checkout has it


def test_bench_json_reports_both_tests_for_each_engine(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "deeproots.cli", "bench", "-m", str(smollm2_path), "-p", "32", "-n", "8", "-r", "2",
         "--vs", "transformers", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    runs = {(r["engine"], r["test"]): r for r in report["results"]}
    assert set(runs) == {(e, t) for e in ("deeproots", "transformers") for t in ("pp32", "tg8")}
    for run in runs.values():
        assert len(run["tokens_per_second"]) == 2 and all(v > 0 for v in run["tokens_per_second"])
    assert report["params"] == 134515008


def test_bench_runs_llama_cpp_beside_deeproots(smollm2_path):
    """A 32-token batch: the size that crashed llama.cpp's AMX kernels on Sapphire Rapids (built without them)."""
    pytest.importorskip("llama_cpp")  # the bench extra, which `make test` installs
    result = subprocess.run(
        [sys.executable, "-m", "deeproots.cli", "bench", "-m", str(smollm2_path), "-p", "32", "-n", "8", "-r", "2",
         "--vs", "llama.cpp", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    runs = {(r["engine"], r["test"]): r for r in json.loads(result.stdout)["results"]}
    assert set(runs) == {(e, t) for e in ("deeproots", "llama.cpp") for t in ("pp32", "tg8")}
    assert all(len(run["tokens_per_second"]) == 2 for run in runs.values())


def test_perplexity_matches_transformers_on_the_same_chunks(smollm2_reference, hf_smollm2):
    _, hf_model = hf_smollm2
    text = TEXT_FILE.read_text()[:4000]  # ~900 tokens: 7 chunks, each scored by both
    context = 128
    ours = summarize(list(chunk_nlls(smollm2_reference, text, context)))
    # The same chunking, scored by transformers: second half of each chunk of `context` tokens.
    ids = smollm2_reference.tokenize(text, add_bos=False)
    nlls = []
    for start in range(0, len(ids) - context + 1, context):
        chunk = ids[start:start + context]
        with torch.no_grad():
            logits = hf_model(torch.tensor([chunk])).logits[0].double()
        log_probs = torch.log_softmax(logits[context // 2:-1], dim=-1)
        nlls.append(-log_probs.gather(1, torch.tensor(chunk[context // 2 + 1:])[:, None])[:, 0])
    reference = math.exp(torch.cat(nlls).mean().item())
    assert ours.n_chunks == len(nlls) and ours.n_scored == sum(len(n) for n in nlls)
    assert ours.perplexity == pytest.approx(reference, rel=1e-4)
    assert 1.0 < ours.perplexity < 100.0


def test_perplexity_cli_rejects_a_text_too_short(smollm2_path, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.")
    result = subprocess.run([sys.executable, "-m", "deeproots.cli", "perplexity", "-m", str(smollm2_path),
                             str(short)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "needs at least" in result.stderr
