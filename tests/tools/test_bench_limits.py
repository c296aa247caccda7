"""What bench holds each row against (deeproots/limits.py), checked against the file's tensor table as the `gguf`
package reads it, and the bench report's new fields against the same independent count."""

import json
import statistics
import subprocess
import sys

import pytest
from gguf import GGUFReader

from deeproots.config import config_from_gguf
from deeproots.formats.gguf import GGUFFile
from deeproots.limits import INT8_OPS_PER_CYCLE, Peak, int8_peak, traffic


def gguf_counts(reader: GGUFReader):
    """(decode weight bytes, prefill matrix ops, output projection ops, (layers, kv heads, head dim)) from gguf-py."""
    tensors = {t.name: t for t in reader.tensors}
    embedding = tensors["token_embd.weight"]
    output = tensors.get("output.weight", embedding)  # tied: the embedding is the output projection
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = lambda key: int(reader.fields[f"{arch}.{key}"].parts[-1][0])  # noqa: E731
    used = field("expert_used_count") if f"{arch}.expert_used_count" in reader.fields else 0
    experts = field("expert_count") if used else 0
    weight_bytes = int(embedding.n_bytes) // int(embedding.shape[1])  # one row of the embedding
    matrix_ops = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and output is not embedding:
            continue
        shape = [int(d) for d in t.shape]
        if len(shape) == 3:
            weight_bytes += int(t.n_bytes) * used // experts
            matrix_ops += 2 * shape[0] * shape[1] * used
        else:
            weight_bytes += int(t.n_bytes)
            if len(shape) == 2 and t is not output:
                matrix_ops += 2 * shape[0] * shape[1]
    output_ops = 2 * int(output.shape[0]) * int(output.shape[1])
    heads = field("attention.head_count")
    kv_heads = field("attention.head_count_kv")
    head_dim = field("embedding_length") // heads
    return weight_bytes, matrix_ops, output_ops, (field("block_count"), kv_heads, head_dim)


def our_traffic(path):
    with GGUFFile.open(path) as f:
        config = config_from_gguf(f.metadata, len(f.metadata["tokenizer.ggml.tokens"]))
    return traffic(path, config)


def check_against_gguf(path, reader: GGUFReader):
    weight_bytes, matrix_ops, output_ops, (layers, kv_heads, head_dim) = gguf_counts(reader)
    ours = our_traffic(path)
    assert (ours.decode_weight_bytes, ours.prefill_matrix_ops, ours.output_ops) == (weight_bytes, matrix_ops,
                                                                                    output_ops)
    # keys and values of every layer, one position, f16
    assert ours.kv_bytes_per_position["f16"] == 2 * layers * kv_heads * head_dim * 2
    assert ours.decode_bytes_per_token(9, "f16") == weight_bytes + 5 * ours.kv_bytes_per_position["f16"]
    assert ours.prefill_ops_per_token(4) == matrix_ops + output_ops / 4


@pytest.mark.slow  # gguf-py reads the 49,152-token vocabulary in seconds
def test_traffic_of_the_default_model_matches_gguf(smollm2_path, smollm2_gguf):
    """Tied embeddings: the whole embedding is read as the output projection."""
    check_against_gguf(smollm2_path, smollm2_gguf)


@pytest.mark.slow  # converts a tiny transformers checkpoint
def test_traffic_of_a_mixture_of_experts_matches_gguf(tiny_q4_0):
    """OLMoE: an output tensor of its own, 2 of 8 experts read per token."""
    path = tiny_q4_0("olmoe")  # the MoE tests convert it too
    reader = GGUFReader(str(path))
    check_against_gguf(path, reader)
    assert "output.weight" in {t.name for t in reader.tensors}


def test_int8_peak_is_cores_times_clock_times_ops_per_cycle():
    assert Peak("avx512-vnni", 2, 2.5, 256).ops_per_second == 2 * 2.5e9 * 256
    assert INT8_OPS_PER_CYCLE["avx512-vnni"] == 256  # 2 VPDPBUSD zmm per cycle, 64 multiply-adds each
    assert int8_peak("portable-c", 2) is None  # no peak claimed for the scalar kernels
    peak = int8_peak("avx512-vnni", 3)
    assert peak is None or (peak.cores == 3 and 0.5 < peak.ghz < 10)


@pytest.mark.slow  # a whole-model bench in a subprocess
def test_bench_json_rows_hold_their_bound(smollm2_path, smollm2_gguf):
    n_prompt, n_gen = 32, 8
    result = subprocess.run(
        [sys.executable, "-m", "deeproots.cli", "bench", "-m", str(smollm2_path), "-p", str(n_prompt), "-n",
         str(n_gen), "-r", "2", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    weight_bytes, matrix_ops, output_ops, (layers, kv_heads, head_dim) = gguf_counts(smollm2_gguf)
    bandwidth = report["read_bandwidth_gbs"]
    # 3 reads before the engines, one after each of the 2 decode repetitions, 3 after
    assert len(report["read_bandwidth_samples"]) == 3 + 2 + 3 and 0.5 < bandwidth < 5000
    assert report["decode_weight_bytes"] == weight_bytes
    runs = {r["test"]: r for r in report["results"]}
    tg, pp = runs[f"tg{n_gen}"], runs[f"pp{n_prompt}"]
    kv_f16_per_position = 2 * layers * kv_heads * head_dim * 2
    assert tg["bytes_per_token"] == weight_bytes + kv_f16_per_position * (n_gen + 1) / 2
    assert tg["gb_per_second"] == pytest.approx(tg["bytes_per_token"] * tg["mean"] / 1e9)
    assert tg["bandwidth_fraction"] == pytest.approx(tg["gb_per_second"] / bandwidth)
    assert pp["ops_per_token"] == matrix_ops + output_ops / n_prompt
    assert pp["ops_per_second"] == pytest.approx(pp["ops_per_token"] * pp["mean"])
    if report["int8_rate_samples"]:  # the int8 probe, measured like the bandwidth: 3 before, 1 per pp repetition, 3 after
        assert len(report["int8_rate_samples"]) == 3 + 2 + 3
        assert report["int8_peak_ops_per_second"] == pytest.approx(statistics.median(report["int8_rate_samples"]))
    if report["int8_peak_ops_per_second"] is not None:
        assert pp["peak_fraction"] == pytest.approx(pp["ops_per_second"] / report["int8_peak_ops_per_second"])
        assert 0 < pp["peak_fraction"] <= 1  # no kernel beats its instruction's rate
