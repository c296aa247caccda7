"""The probes of `deeproots bench`: the read-bandwidth probe reads every byte it is given (its checksum is numpy's),
the int8 probe does every dot product it counts (its lane sums are the operations), and their rates are plausible."""

import time

import numpy as np
import pytest

from deeproots.errors import InternalError
from deeproots.kernels import _cpu, get_num_threads, pack_weight, quantized_linear, set_num_threads
from deeproots.kernels.bandwidth import read_bandwidth
from deeproots.kernels.int8_rate import int8_rate
from deeproots.quant import GGMLType


def xor_of_words(buffer: np.ndarray) -> int:
    """The XOR of the buffer's whole 64-bit words (a tail shorter than a word is not in it)."""
    words = buffer[: buffer.nbytes // 8 * 8].view(np.uint64)
    return int(np.bitwise_xor.reduce(words)) if words.size else 0


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("nbytes", [0, 7, 8, 255, 256, 4096 + 72, 3 << 20])
def test_read_bytes_reads_every_word(nbytes, threads):
    buffer = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    before = get_num_threads()
    set_num_threads(threads)
    try:
        assert _cpu.read_bytes(buffer) == xor_of_words(buffer)
        assert _cpu.read_bytes(buffer[1:]) == xor_of_words(buffer[1:])  # unaligned start
    finally:
        set_num_threads(before)


def test_read_bytes_refuses_what_is_not_contiguous_bytes():
    with pytest.raises(InternalError):
        _cpu.read_bytes(np.zeros(64, np.float32))
    with pytest.raises(InternalError):
        _cpu.read_bytes(np.zeros(64, np.uint8)[::2])


def test_read_bandwidth_is_plausible():
    """64 MiB reads (a fast test, so from cache as much as from memory): between a slow disk's rate and far more
    than any CPU's caches deliver."""
    samples = read_bandwidth(64 << 20, repetitions=3)
    assert len(samples) == 3 and all(0.5 < gbs < 5000 for gbs in samples)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rounds", [0, 1, 1000])
def test_int8_probe_does_the_operations_it_counts(rounds, threads):
    """Each accumulator lane adds products of 1 x 2, so the lanes' sum is 2 operations per multiply-add done:
    the AVX-512 build's 16 VPDPBUSD zmm a round (64 multiply-adds each), the AVX2 build's 4 steps of 8 VPMADDUBSW
    (256 each), on every thread."""
    assert _cpu.INT8_PROBE_OPS_PER_ROUND == {"avx512-vnni": 16 * 64 * 2, "avx2": 4 * 256 * 2, "portable-c": 0}[_cpu.ISA]
    before = get_num_threads()
    set_num_threads(threads)
    try:
        assert _cpu.int8_probe(rounds) == threads * rounds * _cpu.INT8_PROBE_OPS_PER_ROUND
    finally:
        set_num_threads(before)


@pytest.mark.parametrize("rounds", [-1, _cpu.INT8_PROBE_MAX_ROUNDS + 1, 2.0])
def test_int8_probe_refuses_rounds_its_lanes_cannot_count(rounds):
    with pytest.raises(InternalError):
        _cpu.int8_probe(rounds)


def test_int8_rate_is_plausible():
    """Between 1 Gop/s and a thousand times what AVX-512 VNNI cores deliver (~1 Tops/s each)."""
    samples = int8_rate(rounds=100_000, repetitions=3)
    if _cpu.INT8_PROBE_OPS_PER_ROUND:
        assert len(samples) == 3 and all(1e9 < rate < 1e15 for rate in samples)
    else:
        assert samples == []


def test_int8_probe_is_a_rate_the_products_approach():
    """The probe stands for prefill's bound, so one thread's Q4_0 product of 128 tokens from cache does a fair part
    of its rate (44-90% on the machines of docs/benchmarks.md; AMX tiles exceed it). An AVX2 probe whose products
    the compiler had taken out of its loop measured ten times the product's rate. Product and probe are timed in
    pairs, one right after the other, so that another process's load (the suite's other worker) meets both."""
    if not _cpu.INT8_PROBE_OPS_PER_ROUND:
        pytest.skip("the portable C build has no int8 probe")
    rng = np.random.default_rng(0)
    k = n = 1024
    blocks = rng.integers(0, 256, (n * k // 32, 18), dtype=np.uint8)  # Q4_0: an f16 scale, 16 bytes of nibbles
    blocks[:, :2] = np.full((len(blocks), 1), 0.01, np.float16).view(np.uint8)
    weight = pack_weight(blocks.reshape(-1), GGMLType.Q4_0, (k, n))
    x = rng.standard_normal((128, k)).astype(np.float32)
    out = np.empty((128, n), np.float32)
    before = get_num_threads()
    set_num_threads(1)
    try:
        pairs = []  # (product's int8 ops/s, probe's)
        for _ in range(5):
            started = time.perf_counter()
            quantized_linear(x, weight, out)
            product_rate = 2 * 128 * k * n / (time.perf_counter() - started)
            pairs.append((product_rate, int8_rate(rounds=200_000, repetitions=1)[0]))
    finally:
        set_num_threads(before)
    product_rate, probe_rate = max(pairs, key=lambda pair: pair[0] / pair[1])
    assert product_rate > 0.2 * probe_rate, (product_rate, probe_rate)
