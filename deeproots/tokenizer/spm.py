"""SentencePiece-style vocabularies (tokenizer.ggml.model = "llama"): Llama 2, Mistral, Gemma ...

Spaces are written as "▁" (U+2581) and, unless tokenizer.ggml.add_space_prefix is false, one is put
before the text. llama.cpp then joins adjacent pieces greedily, always taking the pair whose union is
the vocabulary token with the highest score (leftmost first on ties); characters no token covers fall
back to <0xNN> byte tokens. That is BPE whose merges are every split of every token into two tokens,
ranked by the score of the token they make, which is how HF `tokenizers` runs it here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from tokenizers import models, normalizers

from deeproots.errors import ModelFormatError

from .backend import BackendParts
from .vocab import Vocab

SPACE = "\u2581"


class SentencePieceBPE:
    default_ids = {"bos": 1, "eos": 2, "unk": 0}  # llama.cpp's defaults for this model type
    add_bos_default = True

    def __init__(self, add_space_prefix: bool):
        self.add_space_prefix = add_space_prefix

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], vocab: Vocab) -> SentencePieceBPE:
        add_space_prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
        if not isinstance(add_space_prefix, (bool, np.bool_)):
            raise ModelFormatError("expected a boolean", field="tokenizer.ggml.add_space_prefix")
        return cls(bool(add_space_prefix))

    def backend_parts(self, vocab: Vocab) -> BackendParts:
        unk_id = vocab.special_ids.get("unk")
        model = models.BPE(vocab.ids, merges_by_score(vocab), byte_fallback=True,
                           unk_token=None if unk_id is None else vocab.tokens[unk_id])
        # Applied to each stretch of text between user-defined or control tokens, so each gets its own
        # leading space, as llama.cpp does after every special token.
        escape = [normalizers.Prepend(SPACE)] if self.add_space_prefix else []
        escape.append(normalizers.Replace(" ", SPACE))
        return BackendParts(model, normalizers.Sequence(escape), None)

    @staticmethod
    def normal_token_bytes(texts: list[str]) -> list[bytes]:
        """Each token's bytes: its text with SentencePiece's space mark turned back into a space, in UTF-8."""
        return [text.replace(SPACE, " ").encode() for text in texts]


def merges_by_score(vocab: Vocab) -> list[tuple[str, str]]:
    """Every (left, right) split of a token into two tokens, best-scoring made token first."""
    ids, tokens = vocab.ids, vocab.tokens
    pairs = []
    for token_id in np.argsort(-vocab.scores, kind="stable").tolist():  # ties keep id order
        text = tokens[token_id]
        for cut in range(1, len(text)):
            left_id = ids.get(text[:cut])
            if left_id is not None:
                right_id = ids.get(text[cut:])
                if right_id is not None:
                    # The vocabulary's own strings, not the slices: fewer objects alive until the backend is built.
                    pairs.append((tokens[left_id], tokens[right_id]))
    return pairs
