"""Our tokenizer on Gemma 3 270M (a 262,144-token SentencePiece-style vocabulary with byte fallback, no space
prefix, BOS 2) against HF transformers' tokenizer loaded from the same GGUF file, over the corpus the SmolLM2
tests use plus Gemma's own special tokens."""

from __future__ import annotations

import random

import numpy as np
import pytest

from deeproots.tokenizer import ChatTemplate
from deeproots.tokenizer.builtin_templates import GEMMA

pytest.importorskip("transformers")
from test_chat_template import CONVERSATIONS  # noqa: E402
from test_tokenizer_vs_hf import CORPUS  # noqa: E402

pytestmark = pytest.mark.slow  # Gemma 3's 262k vocabulary, transformers

GEMMA_TEXTS = ["<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>x<eos>", "[multimodal] x",
               "a\n\n\nb", "x    y", "<unused0>", "<start_of_image>", "\t\tindented", "<end_of_turn>"]
TEXTS = CORPUS + GEMMA_TEXTS


def test_file_settings(gemma3_tokenizer, hf_gemma3_tokenizer, gemma3_metadata):
    ours, hf = gemma3_tokenizer, hf_gemma3_tokenizer
    assert gemma3_metadata["tokenizer.ggml.add_space_prefix"] is False and ours.add_space_prefix is False
    assert (ours.bos_id, ours.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (2, 1)
    assert ours.add_bos is True and ours.encode("Hi") == hf.encode("Hi")
    end_of_turn = hf.convert_tokens_to_ids("<end_of_turn>")
    assert ours.stop_ids == {hf.eos_token_id, end_of_turn}


def test_encode_parsing_special_tokens_matches_hf(gemma3_tokenizer, hf_gemma3_tokenizer):
    mismatches = [text for text in TEXTS if gemma3_tokenizer.encode(text, parse_special=True) != hf_gemma3_tokenizer.encode(text)]
    assert mismatches == []


def test_encode_of_plain_text_matches_hf(gemma3_tokenizer, hf_gemma3_tokenizer):
    # Control tokens written in the text are characters (HF: split_special_tokens); user-defined ones still count.
    mismatches = [text for text in TEXTS
                  if gemma3_tokenizer.encode(text) != hf_gemma3_tokenizer.encode(text, split_special_tokens=True)]
    assert mismatches == []


def test_decode_matches_hf_and_round_trips(gemma3_tokenizer, hf_gemma3_tokenizer):
    ours, hf = gemma3_tokenizer, hf_gemma3_tokenizer
    for text in TEXTS:
        ids = ours.encode(text, parse_special=True)
        assert ours.decode(ids[1:]) == text
        for skip in (False, True):
            assert ours.decode(ids, skip_special=skip) == hf.decode(ids, skip_special_tokens=skip), text


def test_decode_of_random_ids_matches_hf(gemma3_tokenizer, hf_gemma3_tokenizer, gemma3_metadata):
    """Random tokens mixed with the byte tokens of whole characters. (Where byte tokens do not form UTF-8, HF's
    ByteFallback decoder turns every byte of their run into U+FFFD, valid ones too; we replace only the bad
    bytes, as Python, HF's byte-level decoder and our streaming decoder do, so that is not compared.)"""
    is_byte = gemma3_metadata["tokenizer.ggml.token_type"] == 6
    others = np.flatnonzero(~is_byte).tolist()
    rng = random.Random(7)
    for _ in range(300):
        ids = []
        for _ in range(rng.randint(1, 10)):
            if rng.random() < 0.7:
                ids.append(rng.choice(others))
            else:
                char = rng.choice("é日😀\x01ß\t")
                ids.extend(hf_gemma3_tokenizer.convert_tokens_to_ids([f"<0x{byte:02X}>" for byte in char.encode()]))
        for skip in (False, True):
            assert gemma3_tokenizer.decode(ids, skip_special=skip) == hf_gemma3_tokenizer.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_built_in_chat_template_gives_hf_s_prompt_tokens(gemma3_metadata, gemma3_tokenizer, hf_gemma3_tokenizer, name):
    """The file has no template; ours falls back to Gemma 3's and must give the ids HF's apply_chat_template gives."""
    messages = CONVERSATIONS[name]
    template = ChatTemplate.from_gguf_metadata(gemma3_metadata, gemma3_tokenizer)
    prompt = template.render(messages, add_generation_prompt=True)
    expected = hf_gemma3_tokenizer.apply_chat_template(messages, chat_template=GEMMA, tokenize=False,
                                             add_generation_prompt=True)
    assert prompt == expected
    ids = gemma3_tokenizer.encode(prompt, add_bos=False, parse_special=True)
    assert ids == hf_gemma3_tokenizer.encode(expected, add_special_tokens=False)
    assert ids[0] == gemma3_tokenizer.bos_id and ids.count(gemma3_tokenizer.bos_id) == 1
