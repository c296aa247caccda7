"""Tokenizer fixtures shared across files: the real models' HF tokenizers are slow to load (Gemma 3's
262k-token vocabulary takes ~20 s through HF's GGUF loader), so each comes from the session's HF model
fixtures in tests/conftest.py, which the model tests load anyway."""

import pytest


@pytest.fixture(scope="session")
def gemma3_metadata(gemma3_path) -> dict:
    from deeproots.formats.gguf import GGUFFile

    with GGUFFile.open(gemma3_path) as gguf:
        return gguf.metadata


@pytest.fixture(scope="session")
def gemma3_tokenizer(gemma3_metadata):
    """Our tokenizer on the Gemma 3 file (its Rust backend is built at the first encode or decode)."""
    from deeproots.tokenizer import Tokenizer

    return Tokenizer.from_gguf_metadata(gemma3_metadata)


@pytest.fixture(scope="session")
def hf_gemma3_tokenizer(hf_gemma3):
    """HF transformers' tokenizer for the Gemma 3 file: the independent reference."""
    return hf_gemma3[0]


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(hf_smollm2):
    """HF transformers' tokenizer for the default model's file."""
    return hf_smollm2[0]
