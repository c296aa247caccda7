"""The Rust tokenizer (HF `tokenizers`) that encodes, assembled from what a vocabulary scheme provides.

Building it for a 262k-token SentencePiece vocabulary takes over a second here (deriving half a million
merges in Python, then the Rust build), so it is built on a thread of its own while the caller goes on,
typically to load the weights; the first encode or decode waits for it.

Known differences from llama.cpp, all on corners real chat prompts do not reach: special tokens are
found leftmost-longest (llama.cpp tries the longest token text first over the whole text, which differs
only when two special tokens overlap), and llama.cpp's per-model lstrip/rstrip flags (Phi-3, Jina) are
not applied.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Protocol

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

    def normal_token_bytes(self, text: str) -> bytes: ...


@dataclass(frozen=True)
class Backend:
    plain: tokenizers.Tokenizer    # control tokens written in the text are ordinary characters
    special: tokenizers.Tokenizer  # control tokens written in the text become their ids
    pieces: list[bytes]            # token id -> the bytes it stands for


def build_in_background(vocab: Vocab, scheme: Scheme) -> Future[Backend]:
    future: Future[Backend] = Future()

    def build() -> None:
        try:
            future.set_result(build_backend(vocab, scheme))
        except Exception as exc:  # reported to whoever first needs the tokenizer
            future.set_exception(ModelFormatError(f"the tokenizer could not be built from the file: {exc}"))

    threading.Thread(target=build, name="deeproots-tokenizer-build").start()
    return future


def build_backend(vocab: Vocab, scheme: Scheme) -> Backend:
    parts = scheme.backend_parts(vocab)
    # As in llama.cpp: user-defined tokens are always matched whole, control tokens only when asked to.
    user_defined = _added_tokens(vocab, {TokenType.USER_DEFINED}, special=False)
    control = _added_tokens(vocab, {TokenType.CONTROL, TokenType.UNKNOWN}, special=True)
    plain = _view(parts, user_defined, [])
    special = _view(parts, user_defined, control)
    return Backend(plain, special, token_pieces(vocab, scheme))


def token_pieces(vocab: Vocab, scheme: Scheme) -> list[bytes]:
    pieces = []
    for token_id, (text, kind) in enumerate(zip(vocab.tokens, vocab.types.tolist())):
        if kind == TokenType.NORMAL:
            pieces.append(scheme.normal_token_bytes(text))
        elif kind == TokenType.BYTE:
            pieces.append(bytes([vocab.byte_values[token_id]]))
        else:
            pieces.append(text.encode() if kind in _VERBATIM_TYPES else b"")
    return pieces


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
