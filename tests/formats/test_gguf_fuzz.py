"""Fuzzing the GGUF reader: every mutation of a valid file either opens (and every tensor then reads)
or is refused with a DeeprootsError; never another exception and never a hang."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deeproots.errors import DeeprootsError
from deeproots.formats.gguf import GGUFFile, GGUFValueType, GGUFWriter
from deeproots.quant.types import GGMLType


def small_valid_file() -> bytes:
    """Every value kind and a few tensor types, kept tiny so most bytes are header fields."""
    writer = GGUFWriter(alignment=64)
    writer.add("general.architecture", "llama")
    writer.add("general.name", "fuzz ✓")
    writer.add("llama.block_count", 2)
    writer.add("llama.rope.freq_base", 10000.0)
    writer.add("tokenizer.ggml.add_bos_token", True)
    writer.add("tokenizer.ggml.tokens", ["<s>", "a", "bc", "déf", ""])
    writer.add("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0, -4.0])
    writer.add("some.int64s", np.array([-1, 2**40], dtype=np.int64))
    writer.add("some.bools", [True, False, True])
    writer.add("some.nested", [[1, 2], ["x"]])
    writer.add("some.float64", 0.5, value_type=GGUFValueType.FLOAT64)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32), GGMLType.F32)
    writer.add_tensor("blk.0.attn_q.weight", np.full(2 * 34, 7, dtype=np.uint8), GGMLType.Q8_0, shape=(32, 2))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16), GGMLType.F16)
    return writer.to_bytes()


BASE = small_valid_file()
SIZE = len(BASE)
# Values that break naive size arithmetic when written over a count, length, type or offset.
BOUNDARY_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 32, 33, 63, 64, 255, 256, 2**16 - 1, 2**24, 2**24 + 1,
                 2**28 + 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

positions = st.integers(0, SIZE - 1)
mutation = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("overwrite"), positions, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("overwrite_int"), positions, st.sampled_from(BOUNDARY_INTS), st.sampled_from([4, 8])),
    st.tuples(st.just("insert"), st.integers(0, SIZE), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), positions, st.integers(1, 16)),
)


def mutate(content: bytes, mutations: list[tuple]) -> bytes:
    data = bytearray(content)
    for kind, position, *arguments in mutations:
        position = min(position, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[position] ^= 1 << arguments[0]
        elif kind == "truncate":
            del data[position:]
        elif kind == "overwrite":
            data[position:position + len(arguments[0])] = arguments[0]
        elif kind == "overwrite_int":
            value, width = arguments
            data[position:position + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
        elif kind == "insert":
            data[position:position] = arguments[0]
        elif kind == "delete":
            del data[position:position + arguments[0]]
    return bytes(data)


def open_and_read_everything(path) -> str:
    """'opened' or 'refused'; any error other than a DeeprootsError propagates and fails the test."""
    try:
        with GGUFFile.open(path) as gguf_file:
            for name in gguf_file.tensors:
                try:
                    gguf_file.tensor_data(name)
                except DeeprootsError:
                    pass  # e.g. a flipped type that deeproots does not know
        return "opened"
    except DeeprootsError:
        return "refused"


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "mutated.gguf"


def test_base_file_is_valid(fuzz_path):
    fuzz_path.write_bytes(BASE)
    with GGUFFile.open(fuzz_path) as gguf_file:
        assert len(gguf_file.metadata) == 12 and len(gguf_file.tensors) == 3


# deadline=None: no per-example time limit (a loaded machine is not a bug)
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ_SETTINGS
@pytest.mark.slow  # hypothesis, many files
@given(mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_file_opens_or_is_refused(fuzz_path, mutations):
    fuzz_path.write_bytes(mutate(BASE, mutations))
    event(open_and_read_everything(fuzz_path))


@FUZZ_SETTINGS
@pytest.mark.slow  # hypothesis, many files
@given(body=st.binary(max_size=256), version=st.sampled_from([2, 3]))
def test_random_bytes_after_a_valid_prologue_open_or_are_refused(fuzz_path, body, version):
    fuzz_path.write_bytes(b"GGUF" + version.to_bytes(4, "little") + body)
    event(open_and_read_everything(fuzz_path))
