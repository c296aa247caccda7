"""CUDA graphs for decode steps: a step of up to 16 sequences, one token each, is one graph replay instead of ~12
kernel launches per layer from Python.

A graph is captured per batch-size bucket (1, 2, 4, 8, 16) and set of KV caches, over static buffers: the
embedded tokens in, every row's position (which the RoPE, cache-write and attention kernels read from the device,
so a replay runs at the positions the buffer holds then), the logits out. A batch short of its bucket is padded with
a scratch cache of one position, whose rows are zeros and whose outputs are dropped. The caches' offsets stay the
host's: checked and advanced here around each replay. Graphs are kept for the most recent KEPT_GRAPHS sets of caches;
a graph never holds its caches alive (the engine frees a finished sequence's cache at once, within its KV budget):
when one of them is freed, every graph over it goes too, before its id can name another cache. Mixtures of experts
decode eagerly (their routing syncs). Only a CUDA device captures; elsewhere `run` declines and the step runs
eagerly, as it also does when a capture fails (logged once). `route` counts what became of each step offered.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)
KEPT_GRAPHS = 8  # graphs (each with its own memory pool) kept for the most recent sets of caches
ENABLED = os.environ.get("DEEPROOTS_CUDA_GRAPHS", "1") != "0"  # DEEPROOTS_CUDA_GRAPHS=0: every step eager


def bucket_for(n_sequences: int) -> int | None:
    """The smallest bucket holding n sequences; None past the largest (such a step runs eagerly)."""
    return next((bucket for bucket in BUCKETS if bucket >= n_sequences), None)


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # (bucket, d_model) the embedded tokens the graph reads
    positions: torch.Tensor  # (bucket,) int64: each row's position
    logits: torch.Tensor  # (bucket, vocab) what the graph writes


class DecodeGraphs:
    def __init__(self, primitives, device: torch.device):
        self.primitives, self.device = primitives, device
        self.enabled = ENABLED and device.type == "cuda"
        self.captured: OrderedDict[tuple, CapturedStep] = OrderedDict()  # the caches' ids -> their graph
        self.watched: set[int] = set()  # ids of the caches whose freeing drops their graphs
        self.scratch = {}  # kv_type -> a one-position cache padding short batches
        self.route: Counter[str] = Counter()  # steps "captured", "replayed" or "declined" (run eagerly)

    def run(self, net, tokens: np.ndarray, caches) -> np.ndarray | None:
        """Logits (B, vocab) on the host for one token of each of B sequences, caches advanced; None where a graph
        cannot run this step (then the caller runs it eagerly)."""
        bucket = bucket_for(len(caches))
        # a mixture's routing brings expert ids to the host mid-step, which a graph cannot capture
        if not self.enabled or bucket is None or net.config.experts is not None \
                or any(cache.room() < 1 for cache in caches):
            self.route["declined"] += 1
            return None
        padded = list(caches) + [self._scratch(net, caches[0])] * (bucket - len(caches))
        key = tuple(id(cache) for cache in padded)
        step = self.captured.get(key)
        offsets = [cache.offset for cache in padded]
        if step is None:
            try:
                step = self._capture(net, tokens, padded, offsets)
            except Exception as error:  # a capture the device refuses must not end the request: run eagerly
                log.warning("CUDA graph capture failed, decoding without graphs: %s", error)
                self.enabled = False
                self.route["declined"] += 1
                return None
            self._keep(key, step, caches)
            self.route["captured"] += 1
        else:
            self._fill(net, step, tokens, offsets)
            self.route["replayed"] += 1
        self.captured.move_to_end(key)
        step.graph.replay()
        for cache in caches:
            cache.advance(1)
        return step.logits[:len(caches)].cpu().numpy()

    def _keep(self, key: tuple, step: CapturedStep, caches) -> None:
        """Keep the new graph (the least recently used beyond KEPT_GRAPHS goes) until one of its caches is freed."""
        self.captured[key] = step
        while len(self.captured) > KEPT_GRAPHS:
            self.captured.popitem(last=False)
        for cache in caches:
            if id(cache) not in self.watched:
                self.watched.add(id(cache))
                weakref.finalize(cache, self._forget, id(cache))

    def _forget(self, cache_id: int) -> None:
        """A cache is being freed: the graphs whose static kernels address its buffers go with it."""
        self.watched.discard(cache_id)
        for key in [key for key in self.captured if cache_id in key]:
            del self.captured[key]

    def _scratch(self, net, like):
        if like.kv_type not in self.scratch:
            c = net.config
            self.scratch[like.kv_type] = type(like)(c.n_layers, c.n_kv_heads, c.head_dim, 1, like.kv_type,
                                                    self.device)
        return self.scratch[like.kv_type]

    def _fill(self, net, step: CapturedStep, tokens: np.ndarray, offsets: list[int]) -> None:
        """The step's inputs into the static buffers (copies before the replay, not part of the graph)."""
        step.x.zero_()
        step.x[:len(tokens)] = net.embed(tokens)
        step.positions.copy_(torch.as_tensor(offsets, dtype=torch.int64))

    def _body(self, net, x: torch.Tensor, caches) -> torch.Tensor:
        """Llama.hidden_states after the embedding, and the output projection, without advancing the caches."""
        lengths = [1] * len(caches)
        for block in net.blocks:
            x = block(x, caches, lengths)
        return net.output(net.ops.rms_norm(x, net.output_norm, net.config.norm_eps))

    def _capture(self, net, tokens: np.ndarray, caches, offsets: list[int]) -> CapturedStep:
        bucket = len(caches)
        step = CapturedStep(torch.cuda.CUDAGraph(), torch.zeros((bucket, net.config.d_model), device=self.device),
                            torch.zeros(bucket, dtype=torch.int64, device=self.device), None)
        self._fill(net, step, tokens, offsets)
        # every layer's attend_sequences reads the step's positions from the static buffer
        self.primitives.step = tuple((id(cache), offset, 1) for cache, offset in zip(caches, offsets)), step.positions
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up off the default stream, as torch.cuda.graphs asks
                self._body(net, step.x, caches)
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(step.graph):
                step.logits = self._body(net, step.x, caches)
        finally:  # the static buffer is the graph's: no later eager step may take it for its positions
            self.primitives.step = None
        return step
