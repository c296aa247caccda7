"""SentencePiece-style ("llama") vocabularies against sentencepiece itself.

Each test trains a tiny sentencepiece BPE model with byte fallback, exports its pieces, scores and types
as GGUF metadata the way llama.cpp's converter does, and compares our tokenizer with sentencepiece.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeproots.tokenizer import ChatTemplate, Tokenizer

spm = pytest.importorskip("sentencepiece")
from sentencepiece import sentencepiece_model_pb2  # noqa: E402
from tiny_sentencepiece import WORDS, TinyModel, gguf_metadata, train, training_lines  # noqa: E402

EXTRA = [
    "", " ", "  ", "   x", "x   ", " leading", "trailing ", "two  spaces  here", "tab\tseparated\tvalues",
    "new\nlines\n\n", "carriage\r\nreturn", "zebra xylophone quartz", "東京タワーと富士山", "😀 emoji 🎉",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ŉ ǅ ẞ", "1234567890", "x <ctl> y", "<ctl>", "<s>", "</s>", "▁already▁escaped",
    "mixed 日本 and english and 😀", "a" * 200, "the " * 50, "\x00\x01\x7f", "Ελληνικά и кириллица",
]
CORPUS = training_lines()[:150] + EXTRA


class Case(TinyModel):
    def __init__(self, add_dummy_prefix: bool):
        super().__init__(add_dummy_prefix)
        self.ours = Tokenizer.from_gguf_metadata(self.metadata)


@pytest.fixture(scope="module", params=[True, False], ids=["space_prefix", "no_space_prefix"])
def case(request) -> Case:
    return Case(request.param)


def test_vocabulary_has_what_the_tests_need(case):
    types = case.metadata["tokenizer.ggml.token_type"]
    assert (types == 6).sum() == 256 and (types == 4).sum() == 1 and (types == 3).sum() == 3  # <s> </s> <ctl>


def test_encode_matches_sentencepiece(case):
    mismatches = [s for s in CORPUS if case.ours.encode(s, add_bos=False) != case.sp.encode(s)]
    assert mismatches == []


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(sorted(set("".join(WORDS) + " \t\nxyzQ😀日€"))), max_size=30)
         | st.text(max_size=20))
def test_random_text_matches_sentencepiece(case, text):
    assert case.ours.encode(text, add_bos=False) == case.sp.encode(text)


def test_add_bos_is_the_default_for_sentencepiece(case):
    assert case.ours.add_bos is True
    assert case.ours.encode("the fox") == [case.sp.bos_id(), *case.sp.encode("the fox")]
    assert case.ours.stop_ids == {case.sp.eos_id()}


def test_user_defined_token_restarts_the_space_prefix(case):
    # llama.cpp matches user-defined tokens first and tokenizes each stretch of text between them on its
    # own, adding the space prefix to each; sentencepiece adds it once, at the very start. We follow
    # llama.cpp, so each stretch equals sentencepiece on that stretch alone.
    ud = case.sp.piece_to_id("<ud>")
    assert case.ours.encode("the<ud>fox", add_bos=False) == [*case.sp.encode("the"), ud, *case.sp.encode("fox")]
    if not case.metadata["tokenizer.ggml.add_space_prefix"]:
        assert case.ours.encode("the<ud>fox", add_bos=False) == case.sp.encode("the<ud>fox")


def test_control_symbols_only_with_parse_special(case):
    ctl = case.sp.piece_to_id("<ctl>")
    assert ctl not in case.ours.encode("x <ctl> y")
    assert case.ours.encode("x <ctl> y", add_bos=False) == case.sp.encode("x <ctl> y")
    assert ctl in case.ours.encode("x <ctl> y", parse_special=True)
    assert case.ours.is_control(ctl) and not case.ours.is_control(case.sp.piece_to_id("<ud>"))


def test_chat_prompt_gives_each_stretch_its_own_space_prefix(case):
    # A Llama 2 / Mistral-style template over this vocabulary: its own <ctl> markup is special, each stretch of
    # text between markup tokens is tokenized alone (with its own space prefix, as llama.cpp does), and a
    # message's "<ctl>" or "<s>" is text within its stretch, as sentencepiece reads it.
    template = ChatTemplate("{{ bos_token }}{% for m in messages %}<ctl>{{ m['content'] }}{% endfor %}<ctl>",
                            bos_token="<s>", eos_token="</s>")
    ctl, bos = case.sp.piece_to_id("<ctl>"), case.sp.bos_id()
    for first, second in (("the fox", " over a dog"), ("x <ctl> y", "<s> hello </s>"), ("<ctl>", "a<ctl>")):
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": second}]
        expected = [bos, ctl, *case.sp.encode(first), ctl, *case.sp.encode(second), ctl]
        assert template.encode(messages, case.ours) == expected, (first, second)


def test_decode_matches_sentencepiece(case):
    for text in CORPUS:
        ids = case.sp.encode(text)
        assert case.ours.decode(ids) == case.sp.decode(ids)
        framed = [case.sp.bos_id(), *ids, case.sp.eos_id()]
        assert case.ours.decode(framed, skip_special=True) == case.sp.decode(framed)


def test_decode_of_random_pieces_matches_sentencepiece(case):
    # Units that keep the bytes valid UTF-8: a normal piece, or the byte tokens of one character. On broken
    # UTF-8 sentencepiece writes one U+FFFD per bad byte where we (like HF and Python) write one per
    # maximal bad sequence, and it shows <unk> as " ⁇ "; neither is compared here.
    rng = random.Random(11)
    normal = [i for i, piece in enumerate(case.proto.pieces) if piece.type == 1]
    for _ in range(300):
        ids = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.7:
                ids.append(rng.choice(normal))
            else:
                char = rng.choice("é日😀\x01ß")
                ids.extend(case.sp.piece_to_id(f"<0x{byte:02X}>") for byte in char.encode())
        assert case.ours.decode(ids) == case.sp.decode(ids)


def test_token_bytes(case):
    assert case.ours.token_bytes(case.sp.piece_to_id("<0xE6>")) == b"\xe6"
    assert case.ours.token_bytes(case.sp.piece_to_id("▁the")) == b" the"
    assert case.ours.token_bytes(case.sp.piece_to_id("<ud>")) == b"<ud>"


@pytest.mark.slow  # a 262k-piece vocabulary built by sentencepiece and by us
def test_a_262k_vocabulary_matches_sentencepiece():
    """Gemma 3's vocabulary has 262,144 tokens: pad the trained model to that size with made-up pieces
    (joins of two or three trained ones, so merges reach many) and compare with sentencepiece on the same."""
    serialized = train(add_dummy_prefix=True)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(serialized)
    rng = random.Random(3)
    trained = [piece.piece for piece in proto.pieces if piece.type == 1]
    seen = set(trained)
    score = min(piece.score for piece in proto.pieces) - 1.0
    while len(proto.pieces) < 262_144:
        text = "".join(rng.choices(trained, k=rng.choice((2, 3))))
        if text not in seen and len(text) <= 16:  # sentencepiece's longest piece
            seen.add(text)
            proto.pieces.add(piece=text, score=score, type=1)
            score -= 1.0
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    metadata = gguf_metadata(proto, sp)

    ours = Tokenizer.from_gguf_metadata(metadata)  # build time: `python benchmarks/startup_phases.py -m gemma3-270m`
    assert ours.vocab_size == 262_144
    for text in CORPUS[:60]:
        assert ours.encode(text, add_bos=False) == sp.encode(text)
