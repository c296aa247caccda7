"""Our tokenizer on the real default model (SmolLM2: gpt2 byte-level BPE, pre-tokenizer "smollm") against
HF transformers' tokenizer loaded from the same GGUF file."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeproots.errors import RequestError
from deeproots.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS  # noqa: E402

pytestmark = pytest.mark.slow  # transformers' tokenizers

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<jupyter_code>"]

HANDWRITTEN = [
    "", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \t \n ", "a", "A", "Hello", "Hello world", " Hello world",
    "Hello world ", "Hello  world", "Hello   world", "hello\tworld", "tab\t\tand\t\t\tmore", "line1\nline2\n",
    "line1\r\nline2\r\n", "trailing spaces   ", "   leading spaces", "mixed \t\n whitespace \n\t ",
    "I'm here, you're there, he's gone, we've been, they'll go, she'd say", "DON'T SHOUT, I'LL LISTEN",
    "It's a 'quoted' word and \"double quotes\"", "café", "naïve façade", "Ångström", "résumé déjà vu",
    "Crème brûlée à la française", "ÀÉÎÕÜ àéîõü ñ Ñ ç Ç", "straße", "Ελληνικά γράμματα", "Русский текст",
    "日本語のテキスト", "中文文本测试", "한국어 텍스트", "混合 mixed テキスト text", "こんにちは、世界！",
    "你好，世界。", "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵", "I ❤️ Python 🐍", "emoji🙂inside",
    "✨ sparkles ✨", "0", "7", "42", "1234567890", "3.14159265358979", "1,000,000", "-273.15", "1e-10",
    "12345678901234567890123456789", "phone: +1 (555) 123-4567", "2024-06-01T12:34:56Z", "x  1", "x 1",
    "version 1.2.3-beta", "$100.00 and €50,00", "50%", "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "if x == 1:\n\tprint('one')\nelse:\n\tpass",
    "<div class=\"a\">Hello</div>", "SELECT * FROM users WHERE id = 1;", "{\"key\": [1, 2, 3], \"nested\": {}}",
    "#include <stdio.h>\nint main() { return 0; }", "a+b=c", "x**2 + y**2 == z**2", "foo_bar_baz", "fooBarBaz",
    "camelCaseAndSnake_case", "http://example.com/path?q=1&r=2", "user@example.com", "C:\\Users\\name",
    "////", "....", "!!!???", "--- *** ___", "(((nested)))", "[brackets] {braces} <angles>", "a\u00a0b nbsp",
    "zero\u200bwidth", "e\u0301 combining", "\u0000nul", "del\x7f", "bell\x07", "Ω≈ç√∫˜µ≤≥÷", "∀x∈ℝ: x²≥0",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu", "ẞ ſ ﬁ ﬀ",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "supercalifragilisticexpialidocious",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|><|im_end|>", "text<|im_end|>text", "< |im_start| >", "<|im_start", "im_start|>",
    "<|IM_START|>", "<<|im_start|>>", "<repo_name>", "<reponame>x</reponame>", "<file_sep><filename>",
    "<jupyter_code>print(1)<jupyter_output>1", "<|im_start|>system\nYou are nice.<|im_end|>\n<|im_start|>assistant\n",
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\r", "éèêëàâäôöûüçñßø",
    "日本語中文字漢한국어", "😀🎉🐍👍🏽❤️🇫🇷", ".,;:!?'\"()[]{}<>-_+=*/\\|@#$%^&~`", "αβγδεжзиклм",
]


def _random_corpus(count: int) -> list[str]:
    rng = random.Random(20240601)
    strings = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 6)):
            pool = rng.choice(POOLS)
            parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
            if rng.random() < 0.15:
                parts.append(rng.choice(SPECIALS))
        strings.append(rng.choice(["", " ", "  "]).join(parts))
    return strings


CORPUS = HANDWRITTEN + _random_corpus(160)


@pytest.fixture(scope="module")
def ours(smollm2_metadata) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="module")
def hf(hf_smollm2_tokenizer):
    return hf_smollm2_tokenizer


def _copy_with_pre_tokenizer(hf, pre_tokenizer, *, ignore_merges: bool = False) -> tokenizers.Tokenizer:
    copy = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    copy.pre_tokenizer = pre_tokenizer
    if ignore_merges:
        copy.model.ignore_merges = True
    return copy


@pytest.fixture(scope="module")
def reference(hf) -> tokenizers.Tokenizer:
    """HF's tokenizer for the file, with SmolLM2's own pre-tokenizer.

    HF's GGUF loader has no entry for pre "smollm" and cuts text with the plain GPT-2 regex. SmolLM2's
    tokenizer.json, and llama.cpp's "smollm" (a \\p{N} split, then the GPT-2 regex), first isolate every
    digit: "x  1" is x|ĠĠ|1 for them and x|Ġ|Ġ1->Ġ,1 for HF's loader. We follow llama.cpp, so the
    reference gets SmolLM2's own Digits(individual_digits) + ByteLevel pre-tokenizer.
    """
    return _copy_with_pre_tokenizer(hf, tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]))


@pytest.fixture(scope="module")
def reference_plain(reference) -> tokenizers.Tokenizer:
    """The reference with control tokens in the text read as ordinary characters (parse_special=False)."""
    copy = tokenizers.Tokenizer.from_str(reference.to_str())
    copy.encode_special_tokens = True
    return copy


def test_corpus_is_large_and_varied():
    assert len(set(CORPUS)) >= 200


def test_encode_matches_hf(ours, reference_plain):
    mismatches = [(s, ours.encode(s), reference_plain.encode(s, add_special_tokens=False).ids)
                  for s in CORPUS if ours.encode(s) != reference_plain.encode(s, add_special_tokens=False).ids]
    assert mismatches == []


def test_encode_parsing_special_tokens_matches_hf(ours, reference):
    mismatches = [s for s in CORPUS
                  if ours.encode(s, parse_special=True) != reference.encode(s, add_special_tokens=False).ids]
    assert mismatches == []


def test_control_tokens_come_only_from_parse_special(ours, smollm2_metadata):
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    im_start, im_end = tokens.index("<|im_start|>"), tokens.index("<|im_end|>")
    text = "<|im_start|>user\nHi<|im_end|>"
    assert ours.encode(text, parse_special=True)[0] == im_start
    assert ours.encode(text, parse_special=True)[-1] == im_end
    assert not {im_start, im_end} & set(ours.encode(text))
    assert ours.decode(ours.encode(text)) == text


def test_digits_are_cut_before_the_gpt2_regex(ours, smollm2_metadata):
    # llama.cpp's "smollm" rule, worked by hand: \p{N} isolates "1", leaving "x  " -> "x" + "  " (\s+(?!\S)).
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    assert ours.encode("x  1") == [tokens.index("x"), tokens.index("ĠĠ"), tokens.index("1")]


def test_add_bos_follows_the_file_and_the_caller(ours, hf, smollm2_metadata):
    assert smollm2_metadata["tokenizer.ggml.add_bos_token"] is False and ours.add_bos is False
    assert ours.encode("Hi") == hf.encode("Hi", add_special_tokens=True)
    assert ours.encode("Hi", add_bos=True) == [smollm2_metadata["tokenizer.ggml.bos_token_id"], *ours.encode("Hi")]
    assert ours.bos_id == hf.bos_token_id and ours.eos_id == hf.eos_token_id


def test_decode_matches_hf_and_round_trips(ours, hf):
    for text in CORPUS:
        ids = ours.encode(text, parse_special=True)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert ours.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True,
                                                                clean_up_tokenization_spaces=False)


def test_decode_of_random_ids_matches_hf(ours, hf):
    # Random ids cut UTF-8 characters anywhere; both sides must replace the same broken bytes with U+FFFD.
    rng = random.Random(7)
    for _ in range(300):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(1, 12))] + [rng.randrange(17)]
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert ours.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True,
                                                                clean_up_tokenization_spaces=False)


def test_token_text_and_control_flags(ours, hf, smollm2_metadata):
    for token_id in [0, 1, 2, 16, 17, 100, 5000, 49151]:
        assert ours.token_text(token_id) == hf.convert_ids_to_tokens(token_id)
        assert ours.is_control(token_id) == (smollm2_metadata["tokenizer.ggml.token_type"][token_id] == 3)
    assert ours.token_bytes(ours.encode(" world")[0]) == b" world"
    emoji = ours.encode("😀")
    assert b"".join(ours.token_bytes(i) for i in emoji) == "😀".encode()


def test_stop_ids(ours, smollm2_metadata):
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    assert ours.stop_ids == {smollm2_metadata["tokenizer.ggml.eos_token_id"], tokens.index("<|endoftext|>")}


def test_bad_ids_are_request_errors(ours):
    for bad in (-1, ours.vocab_size, 1.5, "3", True):
        with pytest.raises(RequestError):
            ours.decode([bad])
        with pytest.raises(RequestError):
            ours.token_bytes(bad)
    with pytest.raises(RequestError):
        ours.encode(b"bytes")
    with pytest.raises(RequestError):
        ours.encode("lone surrogate \ud800")


class _Sides:
    """Both tokenizers under one short repr, so hypothesis reports only the failing text."""

    def __init__(self, ours: Tokenizer, reference: tokenizers.Tokenizer, reference_plain: tokenizers.Tokenizer):
        self.ours, self.reference, self.reference_plain = ours, reference, reference_plain

    def __repr__(self) -> str:
        return "<ours and HF>"


@pytest.fixture(scope="module")
def sides(ours, reference, reference_plain) -> _Sides:
    return _Sides(ours, reference, reference_plain)


@pytest.fixture(scope="module")
def spelled_bytes(smollm2_metadata) -> set[int]:
    """Bytes the vocabulary has a token for: SmolLM2 lacks a few (0x04, 0xF1, ...), which both sides drop."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tokens = set(smollm2_metadata["tokenizer.ggml.tokens"])
    return {byte for byte, char in bytes_to_unicode().items() if char in tokens}


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=40))
def test_random_text_matches_hf(sides, spelled_bytes, text):
    ours = sides.ours
    assert ours.encode(text) == sides.reference_plain.encode(text, add_special_tokens=False).ids
    assert ours.encode(text, parse_special=True) == sides.reference.encode(text, add_special_tokens=False).ids
    if set(text.encode()) <= spelled_bytes:
        assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
def test_other_pre_tokenizers_match_hf(smollm2_metadata, hf, pre):
    """The same vocabulary under other tokenizer.ggml.pre names, against the split HF's GGUF loader uses for
    that name. For llama-bpe, llama.cpp (and Llama 3's tokenizer.json) also take a word that is a token
    whole (ignore_merges); HF's GGUF loader does not, so the reference gets that flag too."""
    ours = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": pre})
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "gpt-2")
    splits = [] if pre == "gpt-2" else [
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated")]
    reference = _copy_with_pre_tokenizer(hf, tokenizers.pre_tokenizers.Sequence([*splits, byte_level]),
                                         ignore_merges=pre == "llama-bpe")
    reference.encode_special_tokens = True
    assert ours.add_bos is False  # the file's add_bos_token wins over llama-bpe's default
    mismatches = [s for s in CORPUS if ours.encode(s) != reference.encode(s, add_special_tokens=False).ids]
    assert mismatches == []


def test_default_pre_tokenizer_isolates_punctuation(smollm2_metadata):
    # llama.cpp's "default" first cuts out runs of punctuation and $+<=>^~|, so " +a" is " ", "+", "a";
    # the GPT-2 regex alone would keep " +" together.
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    default = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "default"})
    gpt2 = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "gpt-2"})
    assert default.encode(" +a") == [tokens.index("Ġ"), tokens.index("+"), tokens.index("a")]
    assert gpt2.encode(" +a") == [tokens.index("Ġ+"), tokens.index("a")]
