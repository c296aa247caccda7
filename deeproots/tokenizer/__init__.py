"""Text <-> token ids from a model file's own vocabulary, chat templates, and streaming detokenization.

    tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata)
    template = ChatTemplate.from_gguf_metadata(gguf.metadata, tokenizer)
    ids = template.encode(messages, tokenizer)  # a user's "<|im_end|>" stays text
"""

from .chat import ChatTemplate
from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["ChatTemplate", "StreamDecoder", "Tokenizer"]
