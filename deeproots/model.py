"""The Python API: `deeproots.load(name_or_path)` returns a Model ready to generate."""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np

from .cache.kv import KV_TYPES, KVCache
from .cache.packed import PackedCache
from .config import ModelConfig, config_from_gguf
from .errors import RequestError, UnsupportedModelError
from .formats.gguf import GGUFFile
from .formats.model_file import open_model_file
from .generate import GenerationStep, generate
from .kernels import set_num_threads
from .memory import release_free_memory
from .models.registry import model_class
from .models.weights import GGUFWeights
from .sampling import SamplingParams
from .store import ModelStore
from .tokenizer import ChatTemplate, Tokenizer
from .tokenizer.vocab import VOCABULARY_KEYS

DEFAULT_CONTEXT = 4096  # tokens; the model's own maximum when it is smaller


class Model:
    def __init__(self, path: str | os.PathLike, *, context: int | None = None, reference: bool = False,
                 threads: int | None = None, kv_type: str | None = None):
        self.path = path
        self.reference = reference
        # float16 keys/values halve the cache, q8_0 blocks nearly halve it again (attention still runs in float32);
        # the reference stays float32.
        kv_type = kv_type or ("f32" if reference else "f16")
        if kv_type not in KV_TYPES:
            raise RequestError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        self.kv_type = kv_type
        self.file = open_model_file(path)  # a GGUF file, or an HF folder presented with GGUF names
        metadata = self.file.metadata
        architecture = model_class(str(metadata.get("general.architecture")))  # unsupported: fail first
        self.tokenizer = Tokenizer.from_gguf_metadata(metadata)
        self.config: ModelConfig = config_from_gguf(metadata, self.tokenizer.vocab_size)
        self.context = context or min(self.config.context_length, DEFAULT_CONTEXT)
        if self.context < 1:
            raise RequestError(f"the context size must be positive, got {self.context}")
        self.template = ChatTemplate.from_gguf_metadata(metadata, self.tokenizer)
        self.tokenizer.build()
        # The tokenizer holds what it needs of the per-token arrays in its own form; as parsed (~9 MB of Python
        # strings for a 49k vocabulary) they would stay alive with the file. `inspect`, `convert` and `quantize`
        # open the file afresh and still see every key.
        for key in VOCABULARY_KEYS:
            metadata.pop(key, None)
        if threads is not None:
            set_num_threads(threads)
        # reference=True dequantizes every matrix to float32: the slow path the fast kernels are tested against.
        # The fast path maps a GGUF file's weights from their packed cache once a load has written it.
        cache = PackedCache.for_file(self.file.path) if not reference and isinstance(self.file, GGUFFile) else None
        weights = GGUFWeights(self.file, packed=not reference, cache=cache)
        self.net = architecture(self.config, weights, self.context)
        weights.finish()
        release_free_memory()  # what parsing, the tokenizer build and repacking freed (see memory.py)
        self.cache = self.new_cache()
        self._cached_ids: list[int] = []  # the tokens whose keys/values the cache holds

    def new_cache(self, max_tokens: int | None = None, kv_type: str | None = None) -> KVCache:
        """An empty cache for this model, of its own kv_type unless another is named."""
        c = self.config
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, max_tokens or self.context,
                       kv_type=kv_type or self.kv_type)

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
        for step in generate(self.net, self.tokenizer, ids, self.cache, params, max_tokens=max_tokens, stop=stop):
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
         reference: bool = False, threads: int | None = None, kv_type: str | None = None) -> Model:
    """Load a model by store name (pulled when missing, if `pull`) or by path to a .gguf file or a Hugging Face folder.

    `reference` selects the float32 reference path instead of the packed kernels; `threads` sets the
    kernels' thread count (default: the physical cores); `kv_type` is "f16" (default), "f32" or "q8_0"
    (8.5 bits a value, llama.cpp's -ctk/-ctv q8_0; needs a head size that is a multiple of 32).
    """
    return Model(ModelStore().resolve(name_or_path, pull=pull), context=context, reference=reference,
                 threads=threads, kv_type=kv_type)
