"""Building a Tokenizer from metadata: typed errors for bad files, llama.cpp's defaults and stop tokens."""

from __future__ import annotations

import numpy as np
import pytest

from deeproots.errors import DeeprootsError, ModelFormatError, UnsupportedModelError
from deeproots.tokenizer import Tokenizer

# A five-token byte-level vocabulary: "a" + "b" merge to "ab"; "<|endoftext|>" is control.
BPE = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "gpt-2",
    "tokenizer.ggml.tokens": ["a", "b", "ab", "Ġ", "<|endoftext|>"],
    "tokenizer.ggml.token_type": np.array([1, 1, 1, 1, 3], dtype=np.int32),
    "tokenizer.ggml.merges": ["a b"],
    "tokenizer.ggml.eos_token_id": 4,
}
# A SentencePiece-style one with byte fallback tokens for "a" and "b" only.
SPM = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "<0x61>", "<0x62>"],
    "tokenizer.ggml.scores": np.array([0, 0, 0, -1, -2, -3, -4, 0, 0], dtype=np.float32),
    "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1, 1, 6, 6], dtype=np.int32),
}


def with_(base: dict, **changes) -> dict:
    """`base` with keys (written with "__" for ".") replaced, or removed when the value is None."""
    updated = dict(base)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            updated.pop(key, None)
        else:
            updated[key] = value
    return updated


def test_the_base_vocabularies_work():
    bpe = Tokenizer.from_gguf_metadata(BPE)
    assert bpe.encode("abab") == [2, 2] and bpe.encode(" a") == [3, 0]
    assert bpe.bos_id is None and bpe.add_bos is False and bpe.stop_ids == {4}
    spm = Tokenizer.from_gguf_metadata(SPM)
    # llama.cpp's SPM defaults: bos 1, eos 2, unk 0, add BOS, add a space prefix.
    assert (spm.bos_id, spm.eos_id, spm.add_bos, spm.add_space_prefix) == (1, 2, True, True)
    assert spm.encode("a b") == [1, 6, 3, 5]
    assert spm.decode(spm.encode("a b"), skip_special=True) == "a b"


@pytest.mark.parametrize(("metadata", "error", "field"), [
    (with_(BPE, tokenizer__ggml__model=None), ModelFormatError, "tokenizer.ggml.model"),
    (with_(BPE, tokenizer__ggml__tokens=None), ModelFormatError, "tokenizer.ggml.tokens"),
    (with_(BPE, tokenizer__ggml__tokens=[]), ModelFormatError, "tokenizer.ggml.tokens"),
    (with_(BPE, tokenizer__ggml__tokens="ab"), ModelFormatError, "tokenizer.ggml.tokens"),
    (with_(BPE, tokenizer__ggml__tokens=["a", "b", "ab", "Ġ", 5]), ModelFormatError, "tokenizer.ggml.tokens"),
    (with_(BPE, tokenizer__ggml__tokens=["a", "b", "ab", "a", "<|endoftext|>"]), ModelFormatError,
     "tokenizer.ggml.tokens"),
    (with_(BPE, tokenizer__ggml__merges=None), ModelFormatError, "tokenizer.ggml.merges"),
    (with_(BPE, tokenizer__ggml__merges=["ab"]), ModelFormatError, "tokenizer.ggml.merges"),
    (with_(BPE, tokenizer__ggml__merges=["a c"]), ModelFormatError, "tokenizer.ggml.merges"),
    (with_(BPE, tokenizer__ggml__merges=["b a"]), ModelFormatError, "tokenizer.ggml.merges"),  # "ba" is no token
    (with_(BPE, tokenizer__ggml__token_type=np.array([1, 1], dtype=np.int32)), ModelFormatError,
     "tokenizer.ggml.token_type"),
    (with_(BPE, tokenizer__ggml__token_type=["x"] * 5), ModelFormatError, "tokenizer.ggml.token_type"),
    (with_(SPM, tokenizer__ggml__scores=np.zeros((9, 2), dtype=np.float32)), ModelFormatError,
     "tokenizer.ggml.scores"),
    (with_(BPE, tokenizer__ggml__eos_token_id=5), ModelFormatError, "tokenizer.ggml.eos_token_id"),
    (with_(BPE, tokenizer__ggml__bos_token_id=-1), ModelFormatError, "tokenizer.ggml.bos_token_id"),
    (with_(BPE, tokenizer__ggml__bos_token_id=True), ModelFormatError, "tokenizer.ggml.bos_token_id"),
    (with_(BPE, tokenizer__ggml__add_bos_token=True), ModelFormatError, "tokenizer.ggml.bos_token_id"),
    (with_(BPE, tokenizer__ggml__add_bos_token="yes"), ModelFormatError, "tokenizer.ggml.add_bos_token"),
    (with_(SPM, tokenizer__ggml__add_space_prefix=1), ModelFormatError, "tokenizer.ggml.add_space_prefix"),
    (with_(SPM, tokenizer__ggml__tokens=["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "<0x61>", "<0xZZ>"]),
     ModelFormatError, "tokenizer.ggml.tokens"),
])
def test_bad_metadata_raises_typed_errors(metadata, error, field):
    with pytest.raises(error) as raised:
        Tokenizer.from_gguf_metadata(metadata)
    assert raised.value.field == field
    assert field in str(raised.value)


def test_unknown_tokenizer_model_lists_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match=r"'bert'.*gpt2.*llama"):
        Tokenizer.from_gguf_metadata(with_(BPE, tokenizer__ggml__model="bert"))


def test_unknown_pre_tokenizer_lists_the_supported_ones():
    with pytest.raises(UnsupportedModelError, match="'no-such-pre'") as raised:
        Tokenizer.from_gguf_metadata(with_(BPE, tokenizer__ggml__pre="no-such-pre"))
    assert all(name in str(raised.value) for name in ("smollm", "llama-bpe", "qwen2", "gpt-2", "default"))
    assert isinstance(raised.value, DeeprootsError)


def test_missing_pre_tokenizer_falls_back_to_default_as_llama_cpp():
    assert Tokenizer.from_gguf_metadata(with_(BPE, tokenizer__ggml__pre=None)).encode("ab") == [2]


def test_llama3_family_adds_bos_unless_the_file_says():
    llama3 = with_(BPE, tokenizer__ggml__pre="llama-bpe", tokenizer__ggml__bos_token_id=4)
    assert Tokenizer.from_gguf_metadata(llama3).add_bos is True
    assert Tokenizer.from_gguf_metadata(with_(llama3, tokenizer__ggml__add_bos_token=False)).add_bos is False


def test_stop_ids_gather_eos_end_of_turn_and_metadata_ids():
    tokens = ["a", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]
    metadata = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array([1, 3, 3, 1, 3, 3], dtype=np.int32),  # <|eot_id|> mislabeled
        "tokenizer.ggml.merges": [], "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.eot_token_id": 5,
    }
    tokenizer = Tokenizer.from_gguf_metadata(metadata)
    assert tokenizer.stop_ids == {2, 3, 4, 5}
    # llama.cpp makes an end-of-generation token control, whatever its type says.
    assert tokenizer.is_control(3)
    assert tokenizer.encode("<|eot_id|>", add_bos=False, parse_special=True) == [3]
    assert tokenizer.decode([1, 0, 3], skip_special=True) == "a"


def test_gpt_oss_end_is_not_a_stop_when_return_and_call_exist():
    tokens = ["<|end|>", "<|return|>", "<|call|>", "x"]
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": [],
                "tokenizer.ggml.eos_token_id": 1}
    assert Tokenizer.from_gguf_metadata(metadata).stop_ids == {1, 2}


def test_metadata_is_not_modified():
    metadata = with_(BPE, tokenizer__ggml__token_type=np.array([1, 1, 1, 1, 1], dtype=np.int32),
                     tokenizer__ggml__tokens=["a", "b", "ab", "Ġ", "<|im_end|>"])
    Tokenizer.from_gguf_metadata(metadata)
    assert metadata["tokenizer.ggml.token_type"].tolist() == [1, 1, 1, 1, 1]
