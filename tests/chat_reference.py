"""HF transformers' tokens for a chat prompt in which only the template's own markup counts as control tokens:
the independent reference ChatTemplate.encode is held against when a message holds a control token's text."""

from __future__ import annotations


def hf_prompt_ids(hf_tokenizer, messages: list[dict], supplied: list[str], **kwargs) -> list[int]:
    """HF's apply_chat_template text for `messages`, tokenized by HF with every special token it reads there, except
    those inside one of the `supplied` strings (each must appear verbatim in the text): the text between two of the
    template's own special tokens is tokenized by HF as plain text (split_special_tokens), as a whole."""
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    inside = _spans(text, supplied)
    encoding = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    added = hf_tokenizer.added_tokens_decoder
    ids, cursor = [], 0
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if token_id in added and added[token_id].special and not any(a <= start < b for a, b in inside):
            ids += _plain(hf_tokenizer, text[cursor:start]) + [token_id]
            cursor = end
    return ids + _plain(hf_tokenizer, text[cursor:])


def _spans(text: str, supplied: list[str]) -> list[tuple[int, int]]:
    spans = []
    for string in supplied:
        start = text.find(string)
        assert start >= 0, f"{string!r} is not in the rendered prompt"
        while start >= 0:
            spans.append((start, start + len(string)))
            start = text.find(string, start + 1)
    return spans


def _plain(hf_tokenizer, text: str) -> list[int]:
    return hf_tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []
