"""StreamDecoder: token-at-a-time text that never splits a UTF-8 character and adds up to the whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeproots.formats.gguf import GGUFFile
from deeproots.tokenizer import StreamDecoder, Tokenizer

spm = pytest.importorskip("sentencepiece")
from tiny_sentencepiece import TinyModel  # noqa: E402

MULTIBYTE_TEXTS = [
    "Hello 😀 world 🎉🎉 done",
    "日本語のテキストと中文文本，还有한국어",
    "👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇫🇷 flag",
    "naïve café — “quotes” … ellipsis € £ ¥",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝛼𝛽𝛾 and 🐍 snakes",
    "mixed: abc 東京 😀 déjà vu 世界 ✨",
]


class _Smol:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __repr__(self) -> str:
        return "<SmolLM2 tokenizer>"


@pytest.fixture(scope="module")
def smol(smollm2_path) -> _Smol:
    with GGUFFile.open(smollm2_path) as gguf:
        return _Smol(Tokenizer.from_gguf_metadata(gguf.metadata))


@pytest.fixture(scope="module", params=[True, False], ids=["space_prefix", "no_space_prefix"])
def tiny(request) -> TinyModel:
    model = TinyModel(request.param)
    model.ours = Tokenizer.from_gguf_metadata(model.metadata)
    return model


def _stream(decoder: StreamDecoder, ids: list[int]) -> list[str]:
    return [decoder.push(token_id) for token_id in ids] + [decoder.flush()]


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_byte_level_stream_holds_partial_characters(smol, text):
    ids = smol.tokenizer.encode(text)
    pieces = _stream(smol.tokenizer.stream_decoder(), ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_byte_level_stream_waits_for_the_rest_of_a_character(smol):
    # SmolLM2 spells "🎉🎉" in byte-level tokens that end inside a character: those pushes give "".
    pieces = _stream(smol.tokenizer.stream_decoder(), smol.tokenizer.encode("🎉🎉 日本語"))
    assert pieces.count("") >= 3 and "".join(pieces) == "🎉🎉 日本語"


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_byte_fallback_stream_matches_sentencepiece(tiny, text):
    # The tiny model knows no emoji and little CJK: those come out as <0xNN> byte tokens, one byte each.
    ids = tiny.sp.encode(text)
    pieces = _stream(tiny.ours.stream_decoder(), ids)
    assert "".join(pieces) == tiny.sp.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    lead_bytes = {tiny.sp.piece_to_id(f"<0x{byte:02X}>") for byte in range(0xC2, 0xF5)}
    if lead_bytes & set(ids):  # a character began in a byte token, so at least one push held it back
        assert "" in pieces[:-1]


def test_stream_takes_off_the_space_prefix_like_decode(tiny):
    ids = tiny.sp.encode("the fox")
    assert "".join(_stream(tiny.ours.stream_decoder(), ids)) == tiny.sp.decode(ids) == "the fox"


def test_flush_turns_an_unfinished_character_into_a_replacement(tiny):
    first_byte = tiny.sp.piece_to_id("<0xF0>")  # the first of the four bytes of an emoji
    decoder = tiny.ours.stream_decoder()
    assert decoder.push(tiny.sp.piece_to_id("▁the")) in ("the", " the")
    assert decoder.push(first_byte) == ""
    assert decoder.flush() == "\ufffd"


def test_skip_special_leaves_control_tokens_out(smol):
    tokenizer = smol.tokenizer
    ids = tokenizer.encode("<|im_start|>assistant\nHi 😀<|im_end|>", parse_special=True)
    shown = "".join(_stream(tokenizer.stream_decoder(), ids))
    hidden = "".join(_stream(tokenizer.stream_decoder(skip_special=True), ids))
    assert shown == "<|im_start|>assistant\nHi 😀<|im_end|>"
    assert hidden == "assistant\nHi 😀"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_ids_stream_to_exactly_the_decode(smol, data):
    tokenizer = smol.tokenizer
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=12))
    skip = data.draw(st.booleans())
    assert "".join(_stream(tokenizer.stream_decoder(skip_special=skip), ids)) == \
        tokenizer.decode(ids, skip_special=skip)


@pytest.mark.slow  # hypothesis over the byte tokens
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_byte_tokens_stream_to_exactly_the_decode(tiny, data):
    # Byte tokens in any order: broken UTF-8 included, which both sides must replace the same way.
    ids = data.draw(st.lists(st.integers(0, len(tiny.proto.pieces) - 1), max_size=12))
    assert "".join(_stream(tiny.ours.stream_decoder(), ids)) == tiny.ours.decode(ids)
