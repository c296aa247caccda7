"""The Python API: `deeproots.load(name_or_path)` returns a Model ready to generate."""

from __future__ import annotations

import atexit
import os
from typing import Any, Iterator, Sequence

import numpy as np

from .cache.kv import KVCache
from .errors import RequestError, UnsupportedModelError
from .generate import GenerationStep, generate
from .device import backend_for_device
from .draft import make_speculator
from .loader import load_model_file
from .sampling import SamplingParams
from .speculative import SpeculationConfig
from .store import ModelStore


class Model:
    """A loaded model with one KV cache of its own, kept between calls so a shared prefix is not run again."""

    def __init__(self, path: str | os.PathLike, *, context: int | None = None, reference: bool = False,
                 threads: int | None = None, kv_type: str | None = None, speculation: str = "off",
                 draft_model: str | os.PathLike | None = None, draft_max: int = 8, device: str = "cpu", tp: int = 1,
                 tp_reduction: str = "exact", secret_file: str | os.PathLike | None = None, pp: int = 1,
                 pp_split: list[int] | None = None):
        backend = "reference" if reference else backend_for_device(device)
        # tp > 1: this process is rank 0 of a tensor-parallel group (parallel/), spawning the other ranks unless
        # torchrun started them; it computes its share of every layer and runs everything else.
        # pp > 1: its stage 0 of a pipeline (parallel/pipeline.py), likewise; both: pp stages of tp ranks each.
        self.cluster = tensor = pipeline = None
        if tp * pp > 1:
            from .parallel.launch import parallel_groups, start_cluster

            if backend == "cuda":
                raise RequestError("tensor and pipeline parallelism run on the CPU backends (gloo) only")
            self.cluster = start_cluster(tp * pp, path, secret_file, context=context, reference=reference,
                                         threads=threads, kv_type=kv_type, tp=tp, tp_reduction=tp_reduction, pp=pp,
                                         pp_split=pp_split)
            tensor, pipeline = parallel_groups(self.cluster.group, tp, pp)
            atexit.register(self.close)  # the other ranks stop with this process
        # reference=True is the reference backend: every matrix float32, every primitive the numpy formula, the
        # slow path the fast kernels are tested against (its KV cache stays float32 unless told otherwise).
        try:
            loaded = self.loaded = load_model_file(path, context=context, backend=backend, threads=threads,
                                                   kv_type=kv_type, tensor_parallel=tensor,
                                                   tp_reduction=tp_reduction, pipeline_parallel=pipeline,
                                                   pp_split=pp_split)
        except BaseException:
            if self.cluster is not None:  # the ranks are gone: nothing for close() to stop at exit
                cluster, self.cluster = self.cluster, None
                cluster.abort()
            raise
        self.path, self.reference, self.backend = path, reference, backend
        self.file, self.config, self.tokenizer = loaded.file, loaded.config, loaded.tokenizer
        self.template, self.net, self.context, self.kv_type = loaded.template, loaded.net, loaded.context, \
            loaded.kv_type
        self.cache = self.new_cache()
        self.speculator = make_speculator(loaded, SpeculationConfig(speculation, draft_max), draft_model,
                                          reference=reference)
        self._cached_ids: list[int] = []  # the tokens whose keys/values the cache holds

    def new_cache(self, max_tokens: int | None = None, kv_type: str | None = None) -> KVCache:
        """An empty cache for this model, of its own kv_type unless another is named."""
        return self.loaded.new_cache(max_tokens, kv_type)

    def close(self) -> None:
        """Stop the other ranks of a tensor-parallel model (nothing to do in one process)."""
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            cluster.close(self.loaded.backend)

    # --- text <-> tokens -------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        """The prompt text for `messages`, or with `tokenize` its token ids, as HF's method of the same name.

        The ids read only the template's own markup as control tokens: a message's "<|im_start|>" stays text
        (ChatTemplate.encode)."""
        if self.template is None:
            raise UnsupportedModelError("this model file has no chat template; send a plain prompt instead (--raw)")
        if tokenize:
            return self.template.encode(messages, self.tokenizer, add_generation_prompt=add_generation_prompt)
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    # --- evaluation ------------------------------------------------------------------------
    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (T, vocab) for every position of `ids`, computed from an empty cache."""
        if not ids:
            raise RequestError("logits() needs at least one token")
        if len(ids) > self.context:
            raise RequestError(f"{len(ids)} tokens do not fit in the context of {self.context}")
        self._reset_cache()
        try:
            return self.net.forward(np.asarray(ids, dtype=np.int64), self.cache, all_logits=True)
        finally:
            self._reset_cache()

    # --- generation ------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], *, max_tokens: int = 256, stop: Sequence[str] = (),
                 stream: bool = False, **sampling: Any) -> str | Iterator[str]:
        """Continue `prompt` (plain text, no template; or token ids) and return or stream the text."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        return self._run(ids, max_tokens, stop, stream, SamplingParams(**sampling))

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256, stop: Sequence[str] = (),
             stream: bool = False, **sampling: Any) -> str | Iterator[str]:
        """Answer the last message of a conversation, rendered with the model's chat template."""
        ids = self.apply_chat_template(messages, tokenize=True)
        return self._run(ids, max_tokens, stop, stream, SamplingParams(**sampling))

    def steps(self, ids: Sequence[int], params: SamplingParams, *, max_tokens: int,
              stop: Sequence[str] = ()) -> Iterator[GenerationStep]:
        """The underlying token-by-token generator, reusing whatever prefix the cache shares with `ids`."""
        ids = list(ids)
        self._keep_common_prefix(ids)
        for step in generate(self.net, self.tokenizer, ids, self.cache, params, max_tokens=max_tokens, stop=stop,
                             speculator=self.speculator):
            ids.append(step.token_id)
            self._cached_ids = ids[:self.cache.offset]
            yield step

    def _run(self, ids: list[int], max_tokens: int, stop: Sequence[str], stream: bool,
             params: SamplingParams) -> str | Iterator[str]:
        texts = (step.text for step in self.steps(ids, params, max_tokens=max_tokens, stop=stop))
        return texts if stream else "".join(texts)

    def _keep_common_prefix(self, ids: list[int]) -> None:
        common = 0
        for cached, new in zip(self._cached_ids, ids):
            if cached != new:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token must run to produce logits
        self.cache.truncate(max(common, 0))
        self._cached_ids = self._cached_ids[:self.cache.offset]

    def _reset_cache(self) -> None:
        self.cache.truncate(0)
        self._cached_ids = []


def load(name_or_path: str | os.PathLike = "smollm2-135m", *, context: int | None = None, pull: bool = True,
         reference: bool = False, threads: int | None = None, kv_type: str | None = None, speculation: str = "off",
         draft_model: str | os.PathLike | None = None, draft_max: int = 8, device: str = "cpu", tp: int = 1,
         tp_reduction: str = "exact", secret_file: str | os.PathLike | None = None, pp: int = 1,
         pp_split: list[int] | None = None) -> Model:
    """Load a model by store name (pulled when missing, if `pull`) or by path to a .gguf file or a Hugging Face folder.

    `reference` selects the reference backend (float32 numpy formulas) instead of the CPU backend's packed kernels; `threads` sets the
    kernels' thread count (default: the physical cores); `kv_type` is "f16" (default), "f32" or "q8_0"
    (8.5 bits a value, llama.cpp's -ctk/-ctv q8_0; needs a head size that is a multiple of 32).
    `speculation` is "off", "lookup" (prompt lookup drafts) or "draft" (drafts from `draft_model`, a store name or
    path of a model with the same vocabulary); `draft_max` caps the drafts verified per step (docs/speculative.md).
    `device` is "cpu", "cuda" (the CUDA backend: Triton kernels on a GPU, docs/gpu.md) or "auto" (cuda when PyTorch
    sees a GPU, else cpu).
    `tp` > 1 splits every layer over that many processes (docs/distributed.md), `tp_reduction` "exact" (logits
    bit-identical to one process) or "sum" (Megatron's all-reduce), `secret_file` the secret every rank proves under
    torchrun; `pp` > 1 cuts the layers into that many stages, one process each (at `pp_split`, the first layer of
    every stage after the first); `close()` stops them.
    """
    store = ModelStore()
    draft = store.resolve(draft_model, pull=pull) if draft_model is not None else None
    return Model(store.resolve(name_or_path, pull=pull), context=context, reference=reference, threads=threads,
                 kv_type=kv_type, speculation=speculation, draft_model=draft, draft_max=draft_max, device=device,
                 tp=tp, tp_reduction=tp_reduction, secret_file=secret_file, pp=pp, pp_split=pp_split)
