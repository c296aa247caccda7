"""StreamDecoder: text from token ids as they are generated, never half a UTF-8 character at a time."""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class StreamDecoder:
    """push() returns the text each new token completes; everything pushed, then flush(), equals decode()."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_space = tokenizer.add_space_prefix  # until the first bytes, as decode() does

    def push(self, token_id: int) -> str:
        """The newly completed text (may be ""): bytes of an unfinished character wait for the next token."""
        data = self._tokenizer.token_bytes(token_id)
        if self._skip_special and self._tokenizer.is_control(token_id):
            return ""
        if self._strip_space and data:
            self._strip_space = False
            data = data.removeprefix(b" ")
        return self._utf8.decode(data)

    def flush(self) -> str:
        """Whatever is left: an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
