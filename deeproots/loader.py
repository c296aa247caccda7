"""From a model file to what runs it: the network placed on a backend, with its tokenizer, template and config.

The Python API (model.py) and the engine (engine/) are both built from a LoadedModel; nothing here knows about them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .backends import Backend, backend_named
from .cache.kv import KVCache, KVLayout, check_kv_type, kv_cache_nbytes
from .cache.packed import PackedCache
from .config import ModelConfig, config_from_gguf, default_context
from .errors import RequestError
from .formats.gguf import GGUFFile
from .kernels import set_num_threads
from .memory import release_free_memory
from .model_file import open_model_file
from .models.registry import model_class
from .models.weights import GGUFWeights
from .tokenizer import ChatTemplate, Tokenizer
from .tokenizer.vocab import VOCABULARY_KEYS

@dataclass
class LoadedModel:
    path: str | os.PathLike
    file: Any  # the GGUFFile, or an HFCheckpoint presenting a folder with GGUF names
    config: ModelConfig
    tokenizer: Tokenizer
    template: ChatTemplate | None  # None: the file has no chat template and its family no built-in one
    net: Any  # the architecture's network (models/), its weights placed by `backend`
    backend: Backend
    context: int  # tokens a sequence may hold
    kv_type: str  # how KV caches store keys and values unless told otherwise

    @property
    def kv_layout(self) -> KVLayout:
        c = self.config
        return KVLayout(c.n_layers, c.n_kv_heads, c.head_dim)

    def new_cache(self, max_tokens: int | None = None, kv_type: str | None = None) -> KVCache:
        """An empty cache for this model from its backend, of its own kv_type unless another is named."""
        return self.backend.kv_cache(self.kv_layout, max_tokens or self.context, kv_type or self.kv_type)


def load_model_file(path: str | os.PathLike, *, context: int | None = None, backend: str = "cpu",
                    threads: int | None = None, kv_type: str | None = None, device: str = "cuda", tensor_parallel=None,
                    tp_reduction: str = "exact", pipeline_parallel=None,
                    pp_split: list[int] | None = None) -> LoadedModel:
    """Read the file, build the tokenizer and the network on the named backend (backends.BACKEND_NAMES); `device` is
    the cuda backend's torch device ("cpu": its kernels under Triton's interpreter, for tests).

    `tensor_parallel` (a parallel.group.ProcessGroup): build only this rank's share of every layer, finishing the
    split projections as `tp_reduction` says (parallel/plan.py); `pipeline_parallel` (one: every rank): only this
    rank's stage of layers, cut at `pp_split` (parallel/pipeline.py); with both, `tensor_parallel` is this stage's
    ranks."""
    if kv_type is not None:
        check_kv_type(kv_type)  # before the load, not after it
    file = open_model_file(path)  # a GGUF file, or an HF folder presented with GGUF names
    metadata = file.metadata
    architecture = model_class(str(metadata.get("general.architecture")))  # unsupported: fail first
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    config = config_from_gguf(metadata, tokenizer.vocab_size)
    context = context or default_context(config)
    if context < 1:
        raise RequestError(f"the context size must be positive, got {context}")
    template = ChatTemplate.from_gguf_metadata(metadata, tokenizer)
    tokenizer.build()
    # The tokenizer holds what it needs of the per-token arrays in its own form; as parsed (~9 MB of Python
    # strings for a 49k vocabulary) they would stay alive with the file. `inspect`, `convert` and `quantize`
    # open the file afresh and still see every key.
    for key in VOCABULARY_KEYS:
        metadata.pop(key, None)
    if threads is not None:
        set_num_threads(threads)
    # The CPU backend maps a GGUF file's weights from their packed cache once a load has written it.
    # A rank's slices are packed in memory: the packed cache holds whole weights.
    packed_cache = PackedCache.for_file(file.path) if backend == "cpu" and isinstance(file, GGUFFile) and \
        tensor_parallel is None and pipeline_parallel is None else None
    placer = backend_named(backend, packed_cache=packed_cache, device=device)
    kv_type = kv_type or placer.default_kv_type
    placer.check_memory(list(file.tensors.values()),
                        kv_cache_nbytes(config.n_layers, config.n_kv_heads, config.head_dim, context, kv_type))
    weights, net_config, net_options = GGUFWeights(file, placer), config, {}
    if tensor_parallel is not None:
        from .parallel.backend import place_shard

        placer, weights, net_config = place_shard(file, config, placer, tensor_parallel, tp_reduction,
                                                  pipeline_parallel)
    if pipeline_parallel is not None:
        from .parallel.pipeline import place_stage

        tp = tensor_parallel.world_size if tensor_parallel is not None else 1
        placer, net_options = place_stage(config, placer, pipeline_parallel, pp_split, tp)
        weights.backend = placer  # the stage over this rank's shard (or over the backend itself)
    net = architecture(net_config, weights, context, **net_options)
    weights.finish()
    release_free_memory()  # what parsing, the tokenizer build and repacking freed (see memory.py)
    return LoadedModel(path, file, config, tokenizer, template, net, placer, context, kv_type)
