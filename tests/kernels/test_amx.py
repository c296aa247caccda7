"""AMX-INT8 prefill products (csrc/qgemm_amx.c) against the float64 reference within the documented bound, and bit
for bit against the AVX-512 VNNI path, for every packed type at odd and aligned sizes; row invariance (a token's
output does not depend on the batch it came in nor on its position in a 16-token tile); the forced fallback."""

import os
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from test_quantized_matmul import ROW_LENGTHS, check_raw, random_raw

from deeproots.errors import RequestError, UnsupportedModelError
from deeproots.kernels import AMX_EMULATION_BUILT, AMX_STATUS, amx_enabled, emulate_amx, experts_linear, \
    kernel_path, pack_weight, quantized_linear, set_amx
from deeproots.kernels import _cpu
from deeproots.quant.types import GGMLType

Q = GGMLType
PACKED_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# Where the CPU has no AMX, the AMX path's own code runs over software tiles (csrc/amx_emulated.h): the same tiling,
# tails and bits, checked against the same references; only the tile instructions themselves are not the CPU's.
HARDWARE = AMX_STATUS == "amx-int8"
needs_amx = pytest.mark.skipif(not (HARDWARE or AMX_EMULATION_BUILT),
                               reason=f"AMX-INT8 is not usable here and its emulation is not built: {AMX_STATUS}")


@contextmanager
def amx_set(enabled: bool):
    """AMX (or, without it, its emulation) switched to `enabled` for the block, then back to the VNNI path or AMX
    as it was."""
    was = amx_enabled()
    if not HARDWARE:
        emulate_amx(True)
    set_amx(enabled)
    try:
        yield
    finally:
        set_amx(was)
        if not HARDWARE:
            emulate_amx(False)


def linear_with(amx: bool, x: np.ndarray, weight) -> np.ndarray:
    with amx_set(amx):
        return quantized_linear(x, weight)


def amx_linear(x: np.ndarray, weight) -> np.ndarray:
    return linear_with(True, x, weight)


@needs_amx
@pytest.mark.parametrize("ggml_type", PACKED_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("t", [16, 17, 47, 64])
@pytest.mark.parametrize("n", [1, 17, 48])
def test_amx_matches_reference_and_the_vnni_bits(ggml_type, t, n):
    for i, k in enumerate(ROW_LENGTHS[ggml_type]):
        rng = np.random.default_rng(10_000 * ggml_type + 100 * t + n + i)
        raw = random_raw(ggml_type, k, n, rng)
        x = rng.standard_normal((t, k)).astype(np.float32)
        check_raw(ggml_type, raw, x, linear=amx_linear)
        weight = pack_weight(raw, ggml_type, (k, n))
        np.testing.assert_array_equal(linear_with(True, x, weight), linear_with(False, x, weight))


@needs_amx
@pytest.mark.parametrize("ggml_type", PACKED_TYPES, ids=lambda t: t.name)
def test_a_rows_result_depends_on_no_other_row(ggml_type):
    """Each row alone (T = 1: the VNNI path) against the batch of 53 (three AMX tiles and a VNNI tail) and against
    the rows reversed, so every row sits at another tile position or in the tail."""
    rng = np.random.default_rng(int(ggml_type))
    k, n = ROW_LENGTHS[ggml_type][-1], 40
    weight = pack_weight(random_raw(ggml_type, k, n, rng), ggml_type, (k, n))
    x = rng.standard_normal((53, k)).astype(np.float32)
    batch = amx_linear(x, weight)
    np.testing.assert_array_equal(amx_linear(x[::-1].copy(), weight)[::-1], batch)
    np.testing.assert_array_equal(np.concatenate([amx_linear(x[i:i + 1], weight) for i in range(len(x))]), batch)


@needs_amx
def test_expert_products_use_amx_with_the_same_bits():
    rng = np.random.default_rng(3)
    k, n, rows = 256, 48, [40, 3, 16, 0, 33]
    weights = tuple(pack_weight(random_raw(Q.Q4_K, k, n, rng), Q.Q4_K, (k, n)) for _ in rows)
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    x = rng.standard_normal((starts[-1], k)).astype(np.float32)
    with amx_set(True):
        on = experts_linear(x, weights, starts)
    with amx_set(False):
        np.testing.assert_array_equal(on, experts_linear(x, weights, starts))


@needs_amx
def test_switching_amx_is_reported():
    with amx_set(False):
        assert not amx_enabled() and "switched off" in kernel_path()
    with amx_set(True):
        assert amx_enabled() and "amx-int8" in kernel_path()


def test_set_amx_validates():
    with pytest.raises(RequestError):
        set_amx(1)
    with pytest.raises(RequestError):
        emulate_amx("yes")
    if not HARDWARE:
        with pytest.raises(UnsupportedModelError):
            set_amx(True)  # the emulation is asked for by name, never taken for the real thing
    if not AMX_EMULATION_BUILT:
        with pytest.raises(UnsupportedModelError):
            emulate_amx(True)


@pytest.mark.slow  # starts a Python process
def test_environment_forces_the_vnni_path():
    code = "from deeproots.kernels import amx_enabled, kernel_path; print(amx_enabled(), kernel_path())"
    env = {**os.environ, "DEEPROOTS_AMX": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False ") and _cpu.ISA in out


@pytest.mark.slow  # loads the default model
@needs_amx
def test_default_model_prefill_on_amx_equals_token_by_token_decode(smollm2_path):
    """The identity speculative decoding relies on: a 40-token prefill (AMX tiles and a VNNI tail) gives every
    position's logits the bits that decoding the same tokens one at a time (VNNI) gives them."""
    from deeproots.model import load

    model = load(smollm2_path, context=64)
    tokens = np.random.default_rng(5).integers(model.config.vocab_size, size=40)
    with amx_set(True):
        prefill = model.net.forward(tokens, model.new_cache(), all_logits=True)  # (40, vocab)
    cache = model.new_cache()
    steps = np.concatenate([model.net.forward(tokens[i:i + 1], cache) for i in range(len(tokens))])
    np.testing.assert_array_equal(prefill, steps)
