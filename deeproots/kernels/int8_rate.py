"""The int8 dot-product rate as the kernels see it: the packed products' own instruction on the kernels' own threads
(csrc/int8probe.c), the bound prefill's integer operations are held to, as bandwidth.py's read bounds decode.

Measured, not computed from the clock: a VM's /proc/cpuinfo gives the nominal clock (2.6 GHz on the AMD EPYC of
docs/benchmarks.md, whose cores ran the probe at a 3.8 GHz rate), and a VM's vCPUs may share a core's vector units."""

import time

from . import _cpu

PROBE_ROUNDS = 2_000_000  # 4 Gop a thread with AVX-512 (2,048 a round): ~4 ms at one core's ~1 Tops/s


def int8_rate(rounds: int = PROBE_ROUNDS, repetitions: int = 5) -> list[float]:
    """int8 operations per second (2 per multiply-add) of `repetitions` probes on the kernel threads, after one
    shorter untimed one; [] where the kernels have no int8 dot product (the portable C build)."""
    if not _cpu.INT8_PROBE_OPS_PER_ROUND:
        return []
    _cpu.int8_probe(rounds // 10)  # warm-up: the pool's threads, the vector units' power state
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        ops = _cpu.int8_probe(rounds)
        samples.append(ops / (time.perf_counter() - started))
    return samples
