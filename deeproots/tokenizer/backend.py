"""The Rust tokenizer (HF `tokenizers`) that encodes, assembled from what a vocabulary scheme provides.

It is built on first use (Tokenizer.build(), which a loading Model calls), on the caller's thread. It used to be
built on a thread of its own while the weights loaded, but nearly all of the build holds the GIL (Python loops, and
PyO3 reading the vocabulary and merges into Rust in one call), so the thread only took turns with the load and
added switching: on this 2-core machine a load of the default model took 360-390 ms with the thread and 320-330 ms
without, Gemma 3 270M's (262k tokens, half a million merges derived in Python) 3.7 s against 3.4 s
(docs/benchmarks.md, "Start-up and memory").

Known differences from llama.cpp, all on corners real chat prompts do not reach: special tokens are
found leftmost-longest (llama.cpp tries the longest token text first over the whole text, which differs
only when two special tokens overlap), and llama.cpp's per-model lstrip/rstrip flags (Phi-3, Jina) are
not applied.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from typing import Iterable, Mapping, NamedTuple, Protocol

import numpy as np

import tokenizers
from tokenizers import AddedToken, models, normalizers, pre_tokenizers

from deeproots.errors import ModelFormatError

from .vocab import TokenType, Vocab

# Token types whose piece is their own text (llama.cpp's token_to_piece); UNUSED and unknown types print nothing.
_VERBATIM_TYPES = frozenset({TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED})


class BackendParts(NamedTuple):
    model: models.Model
    normalizer: normalizers.Normalizer | None
    pre_tokenizer: pre_tokenizers.PreTokenizer | None


class Scheme(Protocol):
    """How one tokenizer.ggml.model turns text into tokens (bpe.ByteLevelBPE, spm.SentencePieceBPE)."""

    default_ids: Mapping[str, int]  # special ids llama.cpp assumes when the file names none
    add_bos_default: bool
    add_space_prefix: bool          # encode puts a space before the text, decode takes it off

    def backend_parts(self, vocab: Vocab) -> BackendParts: ...

    def normal_token_bytes(self, texts: list[str]) -> list[bytes]: ...  # each text read as a NORMAL token


class TokenPieces:
    """token id -> the bytes it stands for, kept as one buffer and the offsets into it.

    A list of one bytes object a token costs ~45 bytes a token more (2.3 MB against 0.5 MB for a 49k vocabulary):
    the list it is built from lives only while the tokenizer is built. Ids are not checked here: the Tokenizer
    checks them first.
    """

    __slots__ = ("_data", "_starts")

    def __init__(self, pieces: list[bytes]):
        self._data = b"".join(pieces)
        self._starts = array("Q", accumulate(map(len, pieces), initial=0))  # (n + 1,): piece i is data[s[i]:s[i+1]]

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, token_id: int) -> bytes:
        return self._data[self._starts[token_id]:self._starts[token_id + 1]]


class ControlFinder:
    """Where the special view reads control tokens in a text, without tokenizing the rest.

    The Rust tokenizer finds its added tokens (user-defined and control) leftmost-longest: the first position
    where one starts, the longest one starting there. This does the same over the same tokens with one regex, a
    trie of their texts: at each position it takes the longest token the trie holds, and Python's regex engine
    jumps between positions where one can start. Over a megabyte of text that is ~50x faster than asking the Rust
    tokenizer, whose encode keeps alignments for every character. The regex is compiled at the first search.
    """

    def __init__(self, vocab: Vocab, user_defined: list[AddedToken], control: list[AddedToken]):
        self._ids = {token.content: vocab.ids[token.content] for token in (*user_defined, *control)}
        self._control_ids = frozenset(self._ids[token.content] for token in control)

    def find(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, id) of each control token in `text`, in order; start and end index the str."""
        found = ((match.start(), match.end(), self._ids[match[0]]) for match in self._pattern.finditer(text))
        return [(start, end, token_id) for start, end, token_id in found if token_id in self._control_ids]

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        try:
            return re.compile(_trie_regex(self._ids))
        except (RecursionError, re.error) as exc:  # token texts branching thousands deep
            raise ModelFormatError(f"the vocabulary's special tokens cannot be searched for: {exc}") from exc


def _trie_regex(texts: Iterable[str]) -> str:
    """A regex matching the longest of `texts` that starts where it is tried ("(?:...)?" tries the longer first)."""
    trie: dict[str, dict] = {}
    for text in filter(None, texts):  # an empty text is never matched
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}  # a text ends here

    def branch(node: dict[str, dict]) -> str:
        ways = [re.escape(char) + branch(child) for char, child in node.items() if char]
        if not ways:
            return ""
        body = ways[0] if len(ways) == 1 else "(?:" + "|".join(ways) + ")"
        return f"(?:{body})?" if "" in node else body

    return branch(trie)


@dataclass(frozen=True)
class Backend:
    plain: tokenizers.Tokenizer    # control tokens written in the text are ordinary characters
    special: tokenizers.Tokenizer  # control tokens written in the text become their ids
    pieces: TokenPieces            # token id -> the bytes it stands for
    controls: ControlFinder        # where `special` reads control tokens in a text


def build_backend(vocab: Vocab, scheme: Scheme) -> Backend:
    try:
        return _build(vocab, scheme)
    except Exception as exc:  # what the Rust build refused: the file's vocabulary is at fault
        raise ModelFormatError(f"the tokenizer could not be built from the file: {exc}") from exc


def _build(vocab: Vocab, scheme: Scheme) -> Backend:
    parts = scheme.backend_parts(vocab)
    # As in llama.cpp: user-defined tokens are always matched whole, control tokens only when asked to.
    user_defined = _added_tokens(vocab, {TokenType.USER_DEFINED}, special=False)
    control = _added_tokens(vocab, {TokenType.CONTROL, TokenType.UNKNOWN}, special=True)
    plain = _view(parts, user_defined, [])
    special = _view(parts, user_defined, control)
    return Backend(plain, special, token_pieces(vocab, scheme), ControlFinder(vocab, user_defined, control))


def token_pieces(vocab: Vocab, scheme: Scheme) -> TokenPieces:
    pieces = scheme.normal_token_bytes(vocab.tokens)  # every token read as NORMAL, then the few others fixed
    types = vocab.types
    for token_id in np.flatnonzero(types != TokenType.NORMAL).tolist():
        kind = int(types[token_id])
        if kind == TokenType.BYTE:
            pieces[token_id] = bytes([vocab.byte_values[token_id]])
        else:
            pieces[token_id] = vocab.tokens[token_id].encode() if kind in _VERBATIM_TYPES else b""
    return TokenPieces(pieces)


def _added_tokens(vocab: Vocab, kinds: set[TokenType], *, special: bool) -> list[AddedToken]:
    return [AddedToken(text, special=special, normalized=False)
            for text, kind in zip(vocab.tokens, vocab.types.tolist()) if kind in kinds]


def _view(parts: BackendParts, user_defined: list[AddedToken], control: list[AddedToken]) -> tokenizers.Tokenizer:
    view = tokenizers.Tokenizer(parts.model)  # both views share the one model
    if parts.normalizer is not None:
        view.normalizer = parts.normalizer
    if parts.pre_tokenizer is not None:
        view.pre_tokenizer = parts.pre_tokenizer
    view.add_tokens(user_defined)
    view.add_special_tokens(control)
    return view
