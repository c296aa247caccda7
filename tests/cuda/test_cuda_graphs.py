"""CUDA graphs for decode steps (backends/cuda_graphs.py): buckets, and replays against eager steps. A capture needs
a GPU: on the CPU (CI) the graphs decline and the eager path (tested in test_backend_contract.py) runs; on a GPU
(benchmarks/gpu_check.sh) replayed steps are held to eager ones."""

import numpy as np
import pytest
import torch

from deeproots.backends.cuda_graphs import BUCKETS, DecodeGraphs, bucket_for
from deeproots.cache.device_kv import DeviceKVCache
from deeproots.loader import load_model_file


def test_buckets():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 16)] == [1, 2, 4, 8, 16]
    assert bucket_for(BUCKETS[-1] + 1) is None  # a larger step runs eagerly


def test_a_graph_goes_with_its_caches():
    """A graph addresses its caches' buffers but holds none alive (the engine frees a finished sequence's KV at
    once): freeing one drops every graph over it, before its id can key another cache's. The bookkeeping alone,
    with placeholders for the graphs, which only a GPU captures."""
    graphs = DecodeGraphs(None, torch.device("cpu"))
    kept, freed = (DeviceKVCache(2, 1, 32, 8, "f16", torch.device("cpu")) for _ in range(2))
    graphs._keep((id(kept),), "a graph over kept", [kept])
    graphs._keep((id(kept), id(freed)), "a graph over both", [kept, freed])
    graphs._keep((id(freed), id(kept)), "the same caches in another order", [freed, kept])
    del freed
    assert list(graphs.captured.values()) == ["a graph over kept"]
    assert graphs.watched == {id(kept)}


def decode(loaded, caches, tokens: np.ndarray, steps: int, graphs: bool) -> list[np.ndarray]:
    """`steps` decode steps of one token per cache, with or without graphs."""
    loaded.backend.graphs.enabled = graphs and loaded.backend.device.type == "cuda"
    out = []
    for step in range(steps):
        out.append(loaded.net.forward_batch(tokens + step, caches, [1] * len(caches)))
    return out


@pytest.mark.slow  # a tiny checkpoint converted
@pytest.mark.parametrize("batch", [1, 3])  # a full bucket, and one padded with the scratch cache
def test_replayed_steps_match_eager_steps(batch, q8_0_file, device):
    loaded = load_model_file(q8_0_file("qwen3"), backend="cuda", device=device)
    prompt = np.asarray(loaded.tokenizer.encode("The quick brown fox jumps over"), dtype=np.int64)
    tokens = np.arange(100, 100 + batch, dtype=np.int64)
    steps = 4 if device == "cuda" else 1  # on the CPU both runs are eager: one step shows the decline
    runs = []
    for graphs in (False, True):
        caches = [loaded.new_cache(64) for _ in range(batch)]
        for cache in caches:
            loaded.net.forward(prompt, cache)
        runs.append(decode(loaded, caches, tokens, steps, graphs))
        assert all(cache.offset == len(prompt) + steps for cache in caches)
    if device == "cpu":  # no capture off a GPU: the "graph" run declined and ran eagerly, the same bits
        assert not loaded.backend.graphs.captured
    else:
        assert loaded.backend.graphs.captured
    for eager, replayed in zip(*runs):
        assert np.abs(eager - replayed).max() <= 1e-5
