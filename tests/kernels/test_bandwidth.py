"""The read-bandwidth probe: it reads every byte it is given (its checksum is numpy's) and its rate is plausible."""

import numpy as np
import pytest

from deeproots.errors import InternalError
from deeproots.kernels import _cpu, get_num_threads, set_num_threads
from deeproots.kernels.bandwidth import read_bandwidth


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
