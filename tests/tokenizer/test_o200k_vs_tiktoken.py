"""The gpt-4o pre-tokenizer (tokenizer.ggml.pre "gpt-4o": o200k, as gpt-oss files name it) against tiktoken.

o200k's vocabulary is a download, so the vocabulary here is SmolLM2's, as tiktoken ranks (a token ranks by the merge
that first makes it), plus a few words no merge reaches, which tiktoken takes whole; the split pattern and the
harmony special tokens are tiktoken's own, read from its tiktoken_ext.openai_public. transformers' TikTokenConverter
turns the ranks into a tokenizer.json, which our HF folder reader must recognise as "gpt-4o"; that metadata, written
to a GGUF file and read back, is ours. llama.cpp tokenizes the same file (but for two known differences)."""

from __future__ import annotations

import base64
import random
import unicodedata
from pathlib import Path

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenizer_vs_hf import CORPUS, POOLS
from transformers.convert_slow_tokenizer import TikTokenConverter

from deeproots.formats.gguf import GGUFFile, GGUFWriter
from deeproots.tokenizer import ChatTemplate, Tokenizer
from deeproots.tokenizer.bpe import ByteLevelBPE
from deeproots.tokenizer.hf_folder import tokenizer_metadata_from_hf


pytestmark = pytest.mark.slow  # transformers' converter, llama.cpp

# Words that are tokens no merge makes (no cut of them into two tokens): tiktoken, as our gpt-4o, takes them whole.
WHOLE_WORDS = ("😀", "Ελληνικά", "Русский", "한국어")
TEMPLATES = Path(__file__).parents[1] / "server" / "templates"
HARMONY_SPECIALS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>")
# o200k splits a word where its case changes and keeps a contraction (of any case) on the word before it.
O200K_TEXTS = [
    "HelloWORLD", "helloWorld", "HELLOworld", "XMLHttpRequest", "'S", "'s", "I'M", "DON'T", "he'S", "THEY'RE",
    "we'Ve", "x'ſ", "'K", "ÉcoleNormale", "ǅungla ǈ", "ΣΑΣ σας", "İstanbul", "a/\n/b", "!!\n/\n", "x\u0301y",
    "1234567", "12 345", "😀😀", "Русский/Ελληνικά", "한국어 한국어", "<|start|>user<|message|>Hi<|end|>",
    "<|channel|>final<|message|>ok<|return|>",
]


def _tiktoken_spec() -> dict:
    """tiktoken's o200k_harmony encoding spec without its download: its pattern and special tokens."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
        return openai_public.o200k_harmony()


def _ranks(smollm2_metadata) -> dict[bytes, int]:
    """SmolLM2's vocabulary as tiktoken ranks: the 256 bytes, then each merge's token in merge order."""
    spelled = ByteLevelBPE.normal_token_bytes
    ranks = {bytes([byte]): byte for byte in range(256)}
    for merge in smollm2_metadata["tokenizer.ggml.merges"]:
        ranks.setdefault(b"".join(spelled(merge.split(" ", 1))), len(ranks))
    for word in map(str.encode, WHOLE_WORDS):
        assert word not in ranks
        assert not any(word[:cut] in ranks and word[cut:] in ranks for cut in range(1, len(word)))
        ranks[word] = len(ranks)
    return ranks


@pytest.fixture(scope="module")
def o200k(smollm2_metadata, tmp_path_factory):
    """(tiktoken's Encoding, the GGUF file, our tokenizer on it) over one vocabulary."""
    spec = _tiktoken_spec()
    ranks = _ranks(smollm2_metadata)
    specials = {name: len(ranks) + index for index, name in enumerate(HARMONY_SPECIALS)}
    assert set(specials) <= set(spec["special_tokens"])  # the names are tiktoken's
    reference = tiktoken.Encoding(name="o200k-smollm2", pat_str=spec["pat_str"], mergeable_ranks=ranks,
                                  special_tokens=specials)
    root = tmp_path_factory.mktemp("o200k")
    (root / "vocab.tiktoken").write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                                                 for token, rank in ranks.items()))
    converted = TikTokenConverter(str(root / "vocab.tiktoken"), pattern=spec["pat_str"],
                                  extra_special_tokens=list(specials)).converted()
    (root / "folder").mkdir()
    converted.save(str(root / "folder" / "tokenizer.json"))
    metadata = tokenizer_metadata_from_hf(str(root / "folder"))
    assert metadata["tokenizer.ggml.pre"] == "gpt-4o"
    writer = GGUFWriter()  # SmolLM2's architecture keys too, so that llama.cpp can load the vocabulary alone
    for key, value in smollm2_metadata.items():
        if not key.startswith("tokenizer."):
            writer.add(key, value)
    for key, value in metadata.items():
        writer.add(key, value)
    path = root / "o200k.gguf"
    writer.write(path)
    with GGUFFile.open(path) as gguf:
        ours = Tokenizer.from_gguf_metadata(gguf.metadata)
    return reference, path, ours


def _random_texts(count: int) -> list[str]:
    """Runs drawn from the shared pools, in upper, lower or mixed case, glued by spaces, newlines, apostrophes."""
    rng = random.Random(200000)
    glue = ["", " ", "  ", "\n", "\r\n", "'", "'s ", "/", "\t"]
    texts = []
    for _ in range(count):
        runs = ["".join(rng.choice(rng.choice(POOLS)) for _ in range(rng.randint(1, 7))) for _ in range(5)]
        runs = [rng.choice((str.upper, str.lower, str.title, str))(run) for run in runs]
        texts.append("".join(run + rng.choice(glue) for run in runs))
    return texts


TEXTS = CORPUS + O200K_TEXTS + _random_texts(300)


def test_gpt_4o_pre_tokenizer_matches_tiktoken(o200k):
    reference, _, ours = o200k
    assert [text for text in TEXTS if ours.encode(text) != reference.encode_ordinary(text)] == []
    assert [text for text in TEXTS
            if ours.encode(text, parse_special=True) != reference.encode(text, allowed_special="all")] == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_random_text_matches_tiktoken(o200k, text):
    reference, _, ours = o200k
    assert ours.encode(text) == reference.encode_ordinary(text)


def test_a_harmony_prompt_is_encoded_as_tiktoken_encodes_its_text(o200k):
    """gpt-oss's published template (tests/server/templates): its markup becomes the harmony special tokens."""
    reference, _, ours = o200k
    template = ChatTemplate((TEMPLATES / "openai-gpt-oss-120b.jinja").read_text())
    call = {"name": "get_weather", "arguments": {"city": "Zürich"}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Zürich?"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": call}]},
                {"role": "tool", "content": "18 C"}]
    city = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": city}}]
    text = template.render(messages, tools=tools)
    assert "<|call|><|start|>functions.get_weather" in text
    assert template.encode(messages, ours, tools=tools) == reference.encode(text, allowed_special="all")


def _llama_cpp_differs_on(text: str) -> bool:
    """llama.cpp's two known differences from tiktoken on gpt-4o files: it rewrites o200k's letter classes as "a
    letter but a-z" and "a letter but A-Z" (std::regex has no \\p{Lu}), which drops the combining marks (\\p{M})
    tiktoken counts as letters ("\\t\\uFE0F's"), and it takes no word whole (ignore_merges is Llama 3's only)."""
    return any(unicodedata.category(char).startswith("M") for char in text) or any(map(text.__contains__, WHOLE_WORDS))


def test_llama_cpp_tokenizes_the_file_as_tiktoken_but_for_its_known_differences(o200k):
    import llama_cpp  # the bench extra, which `make test` installs

    reference, path, _ = o200k
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert [text for text in TEXTS if not _llama_cpp_differs_on(text)
            and llm.tokenize(text.encode(), add_bos=False, special=True)
            != reference.encode(text, allowed_special="all")] == []
