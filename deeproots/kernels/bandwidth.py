"""Memory read bandwidth as the kernels see it: one streaming read of a buffer far beyond the last-level cache, on
the kernels' own threads (csrc/memread.c), the bound a decode step's weight reads are compared with."""

import statistics
import time

import numpy as np

from . import _cpu

READ_BYTES = 1 << 30  # 1 GiB: twice this machine's 480 MiB L3, so a sweep finds nothing of the last one cached


def read_bandwidth(nbytes: int = READ_BYTES, repetitions: int = 5) -> list[float]:
    """GB/s (1e9 bytes/s) of `repetitions` full reads of a fresh `nbytes` buffer, after one untimed read."""
    buffer = np.ones(nbytes, np.uint8)  # written once, so every page is mapped before the timed reads
    _cpu.read_bytes(buffer)  # warm-up: page tables, the pool's threads
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        _cpu.read_bytes(buffer)
        samples.append(nbytes / (time.perf_counter() - started) / 1e9)
    return samples


def median_read_bandwidth(nbytes: int = READ_BYTES, repetitions: int = 5) -> float:
    return statistics.median(read_bandwidth(nbytes, repetitions))
