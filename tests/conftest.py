"""Shared fixtures: the real default model, pulled into the store once per machine."""

from pathlib import Path

import pytest

from deeproots.store import DEFAULT_MODEL, ModelStore


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return ModelStore().pull(DEFAULT_MODEL, quiet=True).path


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_path) -> dict:
    """The default model's GGUF metadata, read with our reader."""
    from deeproots.formats.gguf import GGUFFile

    with GGUFFile.open(smollm2_path) as gguf:
        return gguf.metadata


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path):
    """HF transformers' own llama on the same GGUF (dequantized to float32): the independent reference."""
    transformers = pytest.importorskip("transformers")
    import torch

    folder, name = str(smollm2_path.parent), smollm2_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    return tokenizer, model


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    """Our engine on the default model (packed weights, fast kernels), loaded once for the session."""
    import deeproots

    return deeproots.load(smollm2_path, context=2048)


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_path):
    """Our float32 reference path on the default model: what the fast kernels are held against."""
    import deeproots

    return deeproots.load(smollm2_path, context=2048, reference=True)
