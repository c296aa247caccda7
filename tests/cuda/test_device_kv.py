"""The device KV cache (cache/device_kv.py) against the host one (cache/kv.py): the same rows, byte for byte, for
f16 and q8_0 (the host's q8_0 is ggml's reference quantizer in C), through update, rows and extend."""

import numpy as np
import pytest
import torch

from deeproots.cache.device_kv import DeviceKVCache, dequantize_q8_0
from deeproots.cache.kv import KVCache, dequantize_rows


@pytest.mark.parametrize("kv_type", ["f16", "q8_0", "f32"])
def test_device_rows_equal_host_rows(kv_type, device):
    rng = np.random.default_rng(0)
    host, ours = KVCache(2, 2, 64, 16, kv_type), DeviceKVCache(2, 2, 64, 16, kv_type, torch.device(device))
    for step in (5, 1, 3):  # a prefill, then a token, then a few
        keys = (rng.standard_normal((2, step, 64)) * 3).astype(np.float32)
        keys[0, 0, :32] = 0  # an all-zero block: scale 0
        values = rng.standard_normal((2, step, 64)).astype(np.float32)
        for layer in (0, 1):
            expected = host.update(layer, keys, values)
            got = ours.update(layer, torch.from_numpy(keys).to(device), torch.from_numpy(values).to(device))
            for e, g in zip(expected, got):
                assert np.array_equal(g.cpu().numpy().view(np.uint8), e.view(np.uint8))
        host.advance(step)
        ours.advance(step)
    copy = DeviceKVCache(2, 2, 64, 16, kv_type, torch.device(device))
    copy.extend(*ours.rows(0, 8))
    assert copy.offset == 8 and torch.equal(copy.keys[:, :, :8], ours.keys[:, :, :8])


def test_dequantized_device_rows_equal_the_host_dequantizer(device):
    rng = np.random.default_rng(1)
    host = KVCache(1, 3, 64, 4, "q8_0")
    keys, _ = host.update(0, rng.standard_normal((3, 4, 64)).astype(np.float32), np.zeros((3, 4, 64), np.float32))
    got = dequantize_q8_0(torch.from_numpy(keys.copy()).to(device)).cpu().numpy()
    assert np.array_equal(got, dequantize_rows(keys))
