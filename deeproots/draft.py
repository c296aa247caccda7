"""A draft model for speculative decoding: a smaller (or more coarsely quantized) model of the same vocabulary
that proposes the next tokens, which the model then verifies (speculative.py).

Each sequence keeps its own draft KV cache, holding a prefix of the sequence's tokens. A step feeds each drafting
sequence the tokens its draft cache lacks, then one token per round, all sequences of the step in one forward
pass of the draft model per round; after the verification the cache forgets the rejected drafts.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .cache.kv import KVCache
from .errors import RequestError
from .generate import SequenceDecoder
from .loader import LoadedModel, load_model_file
from .sampling import distribution, draw_batch, draw_from, prepare_logits
from .speculative import Proposal, SpeculationConfig, Speculator


class VocabularyMismatchError(RequestError):
    """The draft model's vocabulary is not the model's: its token ids would mean other text."""


def check_same_vocabulary(draft: LoadedModel, target: LoadedModel) -> None:
    """Every token id must stand for the same bytes, and the logits must be as wide."""
    a, b = draft.tokenizer, target.tokenizer
    same = a.vocab_size == b.vocab_size and draft.config.vocab_size == target.config.vocab_size and all(
        a.token_bytes(i) == b.token_bytes(i) for i in range(a.vocab_size))
    if not same:
        raise VocabularyMismatchError(
            f"the draft model {draft.path} ({a.vocab_size} tokens) does not have the vocabulary of the model "
            f"{target.path} ({b.vocab_size} tokens): a draft model must share it")


class DraftModel:
    def __init__(self, loaded: LoadedModel, context: int):
        self.loaded = loaded
        self.context = context

    def start(self, prompt_ids: Sequence[int]) -> KVCache:
        """A sequence's draft cache, holding all of its prompt but the last token (which the first step feeds with
        the first sampled one)."""
        cache = self.loaded.new_cache(self.context)
        if len(prompt_ids) > 1:
            self.loaded.net.forward(np.asarray(prompt_ids[:-1], dtype=np.int64), cache)
        return cache

    def propose(self, caches: Sequence[KVCache], decoders: Sequence[SequenceDecoder],
                lengths: Sequence[int]) -> list[Proposal]:
        """lengths[i] drafts for each sequence, drawn as the sequence's sampler would draw (greedy: the argmax)
        from the draft model's distribution; the distributions come with them when the sequence samples."""
        proposals = [Proposal([], None if decoder.sampler.params.greedy else []) for decoder in decoders]
        active = [i for i, k in enumerate(lengths) if k > 0]
        feeds = {i: decoders[i].history[caches[i].offset:] for i in active}  # what each draft cache lacks
        for _ in range(max(lengths, default=0)):
            active = [i for i in active if len(proposals[i].drafts) < lengths[i]]
            tokens = np.asarray([t for i in active for t in feeds[i]], dtype=np.int64)  # (N,)
            logits = self.loaded.net.forward_batch(tokens, [caches[i] for i in active],
                                                   [len(feeds[i]) for i in active])  # (len(active), vocab)
            for row, i in enumerate(active):
                token = self._draw(logits[row], decoders[i], proposals[i])
                proposals[i].drafts.append(token)
                feeds[i] = [token]
        return proposals

    @staticmethod
    def _draw(row: np.ndarray, decoder: SequenceDecoder, proposal: Proposal) -> int:
        """The next draft from the draft logits row (vocab,): penalties and bias over the history and the drafts
        so far, as the sequence samples (its constraint is left to the verification)."""
        params = decoder.sampler.params
        prepared = prepare_logits(np.asarray(row, dtype=np.float32), decoder.history + proposal.drafts, params)
        if proposal.probs is None:
            return draw_batch(prepared[None], [decoder.sampler])[0]
        q = distribution(prepared, params)  # (vocab,) float64
        proposal.probs.append(q)
        return draw_from(q, decoder.sampler.uniform())

    @staticmethod
    def keep(cache: KVCache, proposed: int, kept: int) -> None:
        """After a verification: the draft cache fed every draft but the last; forget the rejected ones."""
        cache.truncate(cache.offset - (proposed - 1) + min(kept, proposed - 1))


def check_speculation_options(config: SpeculationConfig, draft_model: str | os.PathLike | None) -> None:
    """A draft model exactly when the mode is "draft"."""
    if config.mode == "draft" and draft_model is None:
        raise RequestError("speculation 'draft' needs a draft model (--draft-model MODEL)")
    if config.mode != "draft" and draft_model is not None:
        raise RequestError("a draft model is only used with speculation 'draft' (--spec draft)")


def make_speculator(target: LoadedModel, config: SpeculationConfig, draft_model: str | os.PathLike | None, *,
                    reference: bool = False) -> Speculator | None:
    """The speculator `config` asks for (None when off), loading the draft model in "draft" mode."""
    check_speculation_options(config, draft_model)
    if config.mode == "off":
        return None
    draft = None
    if config.mode == "draft":
        loaded = load_model_file(draft_model, context=target.context, backend="reference" if reference else "cpu",
                                 kv_type=target.kv_type)
        check_same_vocabulary(loaded, target)
        draft = DraftModel(loaded, target.context)
    return Speculator(config, draft)
