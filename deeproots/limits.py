"""What bounds a `deeproots bench` row: the bytes one decode token reads, the integer operations one prefill token
costs, and this CPU's nominal peak for them (the measured read bandwidth is kernels/bandwidth.py's, the measured int8
rate kernels/int8_rate.py's: bench holds rows to the measured ones, the nominal peak where no probe exists).

Decode is bound by memory: a token reads every weight matrix once (the output projection included), one row of the
token embedding and the KV cache so far. Prefill is bound by arithmetic: each matrix costs 2 * K * N integer
operations (a multiply and an add per weight) per token, the output projection once per prompt (only the last
token's logits are computed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .cache.kv import kv_cache_nbytes
from .config import ModelConfig
from .model_file import open_model_file

EMBEDDING = "token_embd.weight"  # GGUF names (a Hugging Face folder's tensors are read under them too)
OUTPUT = "output.weight"

# int8 multiply-add operations (2 per multiply-accumulate) one core issues per cycle, by instruction set:
#   avx512-vnni: 2 x VPDPBUSD zmm per cycle (ports 0 and 5 on Xeons with two FMA units), 64 multiply-adds each;
#   avx2:        2 x VPMADDUBSW ymm per cycle, 32 multiply-adds each (Intel; Zen 2 has one such port);
#   amx-int8:    one TDPBUSD (16 x 16 x 64 multiply-adds) per 16 cycles, i.e. 1,024 multiply-adds per cycle.
# `deeproots bench` holds each prefill row to its own engine's: amx-int8 where our products ran on AMX, else _cpu.ISA.
INT8_OPS_PER_CYCLE = {"avx512-vnni": 2 * 64 * 2, "avx2": 2 * 32 * 2, "amx-int8": 1024 * 2}


@dataclass(frozen=True)
class Traffic:
    """Per-token work of one model file, from its tensor table."""
    decode_weight_bytes: int  # bytes of weights one decode token reads
    kv_bytes_per_position: dict[str, int]  # KV cache bytes one attended position costs, by kv type
    prefill_matrix_ops: int  # 2 * K * N summed over the matrices every prompt token goes through
    output_ops: int  # 2 * K * N of the output projection, applied to a prompt's last token only

    def decode_bytes_per_token(self, n_gen: int, kv_type: str) -> float:
        """Mean bytes per token of tgN from an empty cache: step i attends over i + 1 positions, (N + 1) / 2 on
        average (sliding windows ignored: tgN is short)."""
        return self.decode_weight_bytes + self.kv_bytes_per_position[kv_type] * (n_gen + 1) / 2

    def prefill_ops_per_token(self, n_prompt: int) -> float:
        return self.prefill_matrix_ops + self.output_ops / n_prompt


def traffic(path: str | os.PathLike, config: ModelConfig) -> Traffic:
    """Count from the file's tensors: 1-d tensors (norms, biases) are read whole; of a mixture of experts' stacked
    tensors (3-d), the used fraction; of the token embedding, one row, unless it doubles as the output projection
    (tied embeddings: no output tensor), which is read whole."""
    with open_model_file(path) as model_file:
        tensors = list(model_file.tensors.values())
    names = {t.name for t in tensors}
    tied = OUTPUT not in names
    weight_bytes = matrix_ops = output_ops = 0
    for t in tensors:
        nbytes = t.nbytes or 0
        if t.name == EMBEDDING:
            weight_bytes += nbytes // t.shape[-1]  # the token's row (shape[-1] = vocabulary rows)
            if not tied:
                continue
        if len(t.shape) == 3:  # (K, N, experts): the routed experts only
            weight_bytes += nbytes * config.experts.used_count // config.experts.count
            matrix_ops += 2 * t.shape[0] * t.shape[1] * config.experts.used_count
            continue
        weight_bytes += nbytes
        if len(t.shape) == 2:
            if t.name in (OUTPUT, EMBEDDING):
                output_ops += 2 * t.shape[0] * t.shape[1]
            else:
                matrix_ops += 2 * t.shape[0] * t.shape[1]
    kv = {kv_type: kv_cache_nbytes(config.n_layers, config.n_kv_heads, config.head_dim, 1, kv_type)
          for kv_type in ("f32", "f16", "q8_0")}
    return Traffic(weight_bytes, kv, matrix_ops, output_ops)


def cpu_ghz() -> float | None:
    """The clock /proc/cpuinfo reports (the highest over the CPUs; a VM reports the nominal one), or None."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            mhz = [float(line.split(":")[1]) for line in cpuinfo if line.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        return None
    return max(mhz) / 1000 if mhz else None


@dataclass(frozen=True)
class Peak:
    isa: str
    cores: int
    ghz: float
    ops_per_cycle: int  # per core

    @property
    def ops_per_second(self) -> float:
        return self.cores * self.ghz * 1e9 * self.ops_per_cycle

    def describe(self) -> str:
        return (f"{self.cores} cores x {self.ghz:.2f} GHz x {self.ops_per_cycle} int8 ops/cycle ({self.isa}) = "
                f"{self.ops_per_second / 1e12:.2f} Tops/s")


def int8_peak(isa: str, cores: int) -> Peak | None:
    """cores x GHz x ops/cycle for `isa`; None where the instruction set or the clock is unknown."""
    ghz = cpu_ghz()
    if isa not in INT8_OPS_PER_CYCLE or ghz is None:
        return None
    return Peak(isa, cores, ghz, INT8_OPS_PER_CYCLE[isa])
