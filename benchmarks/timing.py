"""Timing helper shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import statistics
import time


def median_us(fn, repeats: int) -> float:
    """Median wall time of fn() in microseconds, after a warm-up of caches and thread pools."""
    for _ in range(max(3, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6
