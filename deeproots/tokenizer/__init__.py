"""Text <-> token ids from a model file's own vocabulary, chat templates, and streaming detokenization.

    tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata)
    ids = tokenizer.encode(template.render(messages), parse_special=True)
"""

from .chat import ChatTemplate
from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["ChatTemplate", "StreamDecoder", "Tokenizer"]
