"""The vocabulary a GGUF file describes: token texts, their types, scores and special ids.

Keys and rules follow llama.cpp (src/llama-vocab.cpp), the reference every GGUF is written for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping

import numpy as np

from deeproots.errors import ModelFormatError


class TokenType(IntEnum):
    """tokenizer.ggml.token_type values (the same numbering as sentencepiece's piece types)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Tokens that end a turn or a generation, found by their text as llama.cpp does: files rarely say which they are.
END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "<|return|>", "<|call|>", "<end_of_utterance>",
})

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# The per-token arrays: read once to build the tokenizer, which keeps what it needs in its own form.
VOCABULARY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                   "tokenizer.ggml.token_type")
_ID_KEYS = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
            "unk": "tokenizer.ggml.unknown_token_id", "eot": "tokenizer.ggml.eot_token_id",
            "eom": "tokenizer.ggml.eom_token_id"}


@dataclass(frozen=True, eq=False)
class Vocab:
    tokens: list[str]                 # id -> text as the file spells it
    ids: dict[str, int]               # text -> id
    types: np.ndarray                 # (n,) int32 TokenType values, end-of-generation tokens forced to CONTROL
    scores: np.ndarray                # (n,) float32, zeros when the file has none
    special_ids: dict[str, int]       # "bos", "eos", "unk", "eot", "eom" -> id, for those the file names
    stop_ids: frozenset[int]
    byte_values: dict[int, int]       # id of each <0xNN> BYTE token -> NN

    def __len__(self) -> int:
        return len(self.tokens)


def read_vocab(metadata: Mapping[str, Any], default_ids: Mapping[str, int]) -> Vocab:
    """Validate the vocabulary keys; `default_ids` are the special ids llama.cpp assumes for this model type."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelFormatError("the file has no vocabulary; it cannot be tokenized", field="tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelFormatError("the vocabulary must be a non-empty array of strings", field="tokenizer.ggml.tokens")
    ids = {text: index for index, text in enumerate(tokens)}
    if len(ids) != len(tokens):
        raise ModelFormatError("the vocabulary lists a token twice", field="tokenizer.ggml.tokens")
    n = len(tokens)
    types = _per_token_array(metadata, "tokenizer.ggml.token_type", n, np.int32, "iu", fill=TokenType.NORMAL)
    scores = _per_token_array(metadata, "tokenizer.ggml.scores", n, np.float32, "iuf", fill=0.0)
    special_ids = _special_ids(metadata, default_ids, n)
    # llama.cpp treats a token that ends generation by its text as control, whatever the file says.
    types[[ids[text] for text in END_OF_GENERATION_TEXTS if text in ids]] = TokenType.CONTROL
    stop_ids = _stop_ids(ids, special_ids)
    return Vocab(tokens, ids, types, scores, special_ids, stop_ids, _byte_values(tokens, types))


def _per_token_array(metadata: Mapping[str, Any], key: str, n: int, dtype: type, kinds: str,
                     fill: int | float) -> np.ndarray:
    """One number per token; `kinds` are the numpy dtype kinds accepted ("i", "u", "f")."""
    value = metadata.get(key)
    if value is None:
        return np.full(n, fill, dtype=dtype)
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in kinds or len(array) < n:
        raise ModelFormatError(f"expected an array of {n} numbers, one per token", field=key)
    return array[:n].astype(dtype)  # astype copies, so the caller's metadata is never modified


def _special_ids(metadata: Mapping[str, Any], default_ids: Mapping[str, int], n: int) -> dict[str, int]:
    found = {name: default for name, default in default_ids.items() if default < n}
    for name, key in _ID_KEYS.items():
        value = metadata.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
            raise ModelFormatError(f"token id {value!r} is not in the vocabulary of {n} tokens", field=key)
        found[name] = int(value)
    return found


def _stop_ids(ids: Mapping[str, int], special_ids: Mapping[str, int]) -> frozenset[int]:
    stops = {special_ids[name] for name in ("eos", "eot", "eom") if name in special_ids}
    stops.update(ids[text] for text in END_OF_GENERATION_TEXTS if text in ids)
    # gpt-oss ends a message with <|end|> but the answer with <|return|> or <|call|> (llama.cpp does the same).
    if "<|return|>" in ids and "<|call|>" in ids and "<|end|>" in ids:
        stops.discard(ids["<|end|>"])
    return frozenset(stops)


def _byte_values(tokens: list[str], types: np.ndarray) -> dict[int, int]:
    values = {}
    for token_id in np.flatnonzero(types == TokenType.BYTE).tolist():
        match = BYTE_TOKEN.fullmatch(tokens[token_id])
        if match is None:
            raise ModelFormatError(f"byte token {token_id} is {tokens[token_id]!r}, not <0xNN>",
                                   field="tokenizer.ggml.tokens")
        values[token_id] = int(match.group(1), 16)
    return values
