"""--device cpu|cuda|auto: which backend runs a model, and what a machine without a GPU says (device.py)."""

import pytest
import torch

from deeproots.cli import main
from deeproots.device import backend_for_device
from deeproots.errors import DeviceError, RequestError
from deeproots.inspect import human_bytes, summarize

GPU = torch.cuda.is_available()


def test_cpu_is_the_c_core_and_auto_follows_the_gpu():
    assert backend_for_device("cpu") == "cpu"
    assert backend_for_device("auto") == ("cuda" if GPU else "cpu")
    with pytest.raises(RequestError, match="cpu, cuda, auto"):
        backend_for_device("tpu")


def test_cuda_without_a_gpu_says_so():
    if GPU:
        assert backend_for_device("cuda") == "cuda"
    else:
        with pytest.raises(DeviceError, match="no CUDA device: PyTorch .* sees no GPU"):
            backend_for_device("cuda")


def test_run_with_device_cuda_is_one_line_without_a_gpu(smollm2_path, capsys):
    if GPU:
        return  # benchmarks/gpu_check.sh runs the model there
    assert main(["run", "--device", "cuda", "-m", str(smollm2_path), "--raw", "-n", "1", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "Traceback" not in err[0]


def test_inspect_estimates_device_memory(smollm2_path, capsys):
    """SmolLM2's types (Q4_1, Q8_0, F32) stay as stored on the device, and its output is tied to the embeddings:
    the device holds the file's tensor bytes, plus the KV cache."""
    main(["inspect", str(smollm2_path), "--ctx", "2048", "--device", "cuda"])
    out = capsys.readouterr().out
    weights = human_bytes(summarize(smollm2_path).weight_bytes)
    assert "device memory at ctx 2048" in out and f"weights {weights} + f16 KV cache 47.2 MB" in out, out
