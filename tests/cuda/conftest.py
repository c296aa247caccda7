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
