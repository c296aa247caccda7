"""Memory read bandwidth as the kernels see it: one streaming read of a buffer far beyond the last-level cache, on
the kernels' own threads (csrc/memread.c), the bound a decode step's weight reads are compared with."""

import mmap
import time

import numpy as np

from . import _cpu

READ_BYTES = 1 << 30  # 1 GiB: twice this machine's 480 MiB L3, so a sweep finds nothing of the last one cached


def mapped_buffer(nbytes: int) -> np.ndarray:
    """nbytes of memory with every page mapped: with MAP_POPULATE in one system call (0.4 s for 1 GiB here, where
    writing a fresh array, a page fault per 4 KiB, took 3 s on the loaded machine); elsewhere written once."""
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes == 0:
        return np.ones(nbytes, np.uint8)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(region, np.uint8)  # keeps the mapping alive


def read_bandwidth(nbytes: int = READ_BYTES, repetitions: int = 5) -> list[float]:
    """GB/s (1e9 bytes/s) of `repetitions` full reads of a fresh `nbytes` buffer, after one untimed read."""
    buffer = mapped_buffer(nbytes)
    _cpu.read_bytes(buffer)  # warm-up: page tables, the pool's threads
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        _cpu.read_bytes(buffer)
        samples.append(nbytes / (time.perf_counter() - started) / 1e9)
    return samples

