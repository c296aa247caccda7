"""Tokenizer fixtures shared across files. The real models' HF tokenizers are session fixtures of tests/conftest.py
(Gemma 3's 262k-token vocabulary takes ~13 s through HF's GGUF loader), loaded without their models."""

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
