"""Tokenizer: text <-> token ids for the vocabulary a GGUF file describes, with llama.cpp's behaviour."""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import numpy as np

from deeproots.errors import ModelFormatError, RequestError, UnsupportedModelError

from .backend import Backend, Scheme, build_backend
from .bpe import ByteLevelBPE
from .spm import SentencePieceBPE
from .stream import StreamDecoder
from .vocab import TokenType, Vocab, read_vocab

SCHEMES: dict[str, type[ByteLevelBPE] | type[SentencePieceBPE]] = {
    "gpt2": ByteLevelBPE,       # byte-level BPE
    "llama": SentencePieceBPE,  # SentencePiece
}


class Tokenizer:
    """Encodes like llama.cpp; decodes like HF (and sentencepiece) where llama.cpp differs: no clean-up of
    spaces before punctuation, and the space encode put first is taken off even after a skipped BOS."""

    def __init__(self, vocab: Vocab, scheme: Scheme, *, add_bos: bool):
        self.vocab_size = len(vocab)
        self.bos_id: int | None = vocab.special_ids.get("bos")
        self.eos_id: int | None = vocab.special_ids.get("eos")
        self.add_bos = add_bos
        self.add_space_prefix = scheme.add_space_prefix  # encode prepends a space, decode removes it
        self.stop_ids = vocab.stop_ids
        hidden = np.isin(vocab.types, (TokenType.CONTROL, TokenType.UNKNOWN))
        self._hidden_ids = frozenset(np.flatnonzero(hidden).tolist())  # what skip_special leaves out
        # Chat templates ask for these at load; every other token's text comes from the backend.
        self._special_texts = {token_id: vocab.tokens[token_id] for token_id in set(vocab.special_ids.values())}
        # The backend is built by build(), or at the first encode or decode (backend.py says why not on a thread).
        # Once it is, the Vocab goes: the backend holds every token's text and bytes in its own compact form.
        self._pending: tuple[Vocab, Scheme] | None = (vocab, scheme)
        self._built: Backend | None = None
        self._build_lock = threading.Lock()

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        name = metadata.get("tokenizer.ggml.model")
        if name is None:
            raise ModelFormatError("the file does not say how to tokenize text", field="tokenizer.ggml.model")
        scheme_class = SCHEMES.get(name) if isinstance(name, str) else None
        if scheme_class is None:
            raise UnsupportedModelError(f"tokenizer model {name!r} (tokenizer.ggml.model) is not supported; "
                                        f"supported: {', '.join(SCHEMES)}")
        vocab = read_vocab(metadata, scheme_class.default_ids)
        scheme = scheme_class.from_metadata(metadata, vocab)
        add_bos = metadata.get("tokenizer.ggml.add_bos_token", scheme.add_bos_default)
        if not isinstance(add_bos, (bool, np.bool_)):
            raise ModelFormatError("expected a boolean", field="tokenizer.ggml.add_bos_token")
        if add_bos and "bos" not in vocab.special_ids:
            raise ModelFormatError("add_bos_token is set but the file names no BOS token",
                                   field="tokenizer.ggml.bos_token_id")
        return cls(vocab, scheme, add_bos=bool(add_bos))

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; control tokens written in it count only with `parse_special`."""
        if not isinstance(text, str):
            raise RequestError(f"text to encode must be a str, not {type(text).__name__}")
        backend = self._backend()
        view = backend.special if parse_special else backend.plain
        try:
            # encode_batch: the same ids as encode, but it releases the GIL, so a server's event loop keeps
            # running while a huge prompt is tokenized on another thread (encode holds it for seconds)
            ids = view.encode_batch([text], add_special_tokens=False)[0].ids
        except TypeError as exc:  # the str holds a lone surrogate, which has no UTF-8 form
            raise RequestError("text to encode is not valid Unicode (it holds a lone surrogate)") from exc
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise RequestError("this vocabulary has no BOS token to add; encode with add_bos=False")
            return [self.bos_id, *ids]
        return ids

    def find_control_tokens(self, text: str) -> list[tuple[int, int, int]]:
        """(start, end, id) of each control token encode(text, parse_special=True) reads in `text`, in order."""
        if not isinstance(text, str):
            raise RequestError(f"text to search must be a str, not {type(text).__name__}")
        return self._backend().controls.find(text)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of `ids`; bytes that do not form UTF-8 become U+FFFD."""
        pieces = self._backend().pieces
        for token_id in ids:
            self._check_id(token_id)
        hidden = self._hidden_ids if skip_special else frozenset()
        data = b"".join([pieces[token_id] for token_id in ids if token_id not in hidden])
        if self.add_space_prefix and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for: possibly part of a UTF-8 character, a control token's own text."""
        self._check_id(token_id)
        return self._backend().pieces[token_id]

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (a control token's own text, GPT-2 bytes as letters, "▁")."""
        self._check_id(token_id)
        text = self._special_texts.get(token_id)
        return self._backend().plain.id_to_token(token_id) if text is None else text

    def is_control(self, token_id: int) -> bool:
        """A control (or unknown-type) token: never made from plain text, left out by skip_special."""
        self._check_id(token_id)
        return token_id in self._hidden_ids

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    def build(self) -> None:
        """Build the Rust tokenizer now rather than at the first encode or decode (a loaded Model has built it).

        Raises ModelFormatError when the file's vocabulary is one the backend refuses."""
        with self._build_lock:
            if self._built is None:
                vocab, scheme = self._pending
                self._built = build_backend(vocab, scheme)
                self._pending = None

    def _backend(self) -> Backend:
        if self._built is None:
            self.build()
        return self._built

    def _check_id(self, token_id: Any) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) \
                or not 0 <= token_id < self.vocab_size:
            raise RequestError(f"token id {token_id!r} is not in the vocabulary of {self.vocab_size} tokens")
