"""The CUDA backend's tests: on a GPU when DEEPROOTS_TEST_DEVICE=cuda (benchmarks/gpu_check.sh), else on the CPU
with the Triton kernels under Triton's interpreter over CPU torch tensors (CI). The interpreter must be switched on
before triton is imported: triton.jit decides at decoration time whether a kernel is compiled or interpreted."""

import os

import pytest

DEVICE = os.environ.get("DEEPROOTS_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def device() -> str:
    """The torch device the CUDA backend's kernels run on in these tests."""
    return DEVICE


@pytest.fixture(scope="session")
def q8_0_file(tiny_checkpoint, tmp_path_factory):
    """convert(model_type) -> a Q8_0 GGUF of the tiny checkpoint of that architecture (tests/tiny_checkpoints.py)."""
    from deeproots.convert import convert_folder

    made = {}

    def convert(model_type: str):
        if model_type not in made:
            folder, _ = tiny_checkpoint(model_type)
            made[model_type] = tmp_path_factory.mktemp(model_type) / "model-q8_0.gguf"
            convert_folder(folder, made[model_type], "q8_0", progress=False)
        return made[model_type]
    return convert
