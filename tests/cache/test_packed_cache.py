"""The packed-weight cache on disk: a second load maps the weights the first one packed, and gets the same logits.

Every test points the store (and so the cache) at its own folder, and copies the model file there: the cache's key
is the file's identity, and a test may change the file.
"""

import json
import mmap
import os
import shutil

import numpy as np
import pytest

import deeproots
from deeproots.cache.packed import CACHE_ENV, PackedCache, packed_cache_dir
from deeproots.store import ModelStore

PROMPT_IDS = [504, 1343, 3186, 3451, 359, 28, 253, 1345]


@pytest.fixture
def model_copy(smollm2_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPROOTS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    path = tmp_path / "model.gguf"
    shutil.copyfile(smollm2_path, path)
    return path


def cache_files() -> list[str]:
    folder = packed_cache_dir()
    return sorted(path.suffix for path in folder.iterdir()) if folder.is_dir() else []


def packed_weights(model) -> list:
    return [weight.weight for block in model.net.blocks for weight in (block.attn_qkv, block.ffn_down)]


def mapped_file(array: np.ndarray) -> bool:
    """The array's bytes are a view of a file's memory map (not the process's own memory)."""
    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(getattr(array, "obj", None), mmap.mmap)


@pytest.mark.slow  # two loads, one packing
def test_second_load_maps_what_the_first_packed(model_copy):
    first = deeproots.load(model_copy, context=64)
    assert cache_files() == [".json", ".packed"]
    second = deeproots.load(model_copy, context=64)
    # The first load packed into the cache file it wrote, the second maps it: both run on the file's pages.
    assert all(mapped_file(weight.data) for weight in packed_weights(first) + packed_weights(second))
    for a, b in zip(packed_weights(first), packed_weights(second)):
        assert (a.ggml_type, a.in_features, a.out_features) == (b.ggml_type, b.in_features, b.out_features)
        assert np.array_equal(a.data, b.data)
    np.testing.assert_array_equal(first.logits(PROMPT_IDS), second.logits(PROMPT_IDS))


@pytest.mark.slow  # three loads and packings
def test_a_damaged_cache_is_repacked_and_rewritten(model_copy):
    reference = deeproots.load(model_copy, context=64).logits(PROMPT_IDS)
    index_path = next(packed_cache_dir().glob("*.json"))
    data_path = index_path.with_suffix(".packed")
    index = json.loads(index_path.read_text())
    name = next(iter(index["weights"]))
    index["weights"][name][3] += 1  # an offset the kernels could not use (not 64-byte aligned)
    index_path.write_text(json.dumps(index))
    with open(data_path, "r+b") as file:  # and bytes that are not what the weights were
        file.write(b"\xff" * 4096)
    np.testing.assert_array_equal(deeproots.load(model_copy, context=64).logits(PROMPT_IDS), reference)
    data_path.write_bytes(data_path.read_bytes()[:1000])  # truncated: the index's size no longer fits
    np.testing.assert_array_equal(deeproots.load(model_copy, context=64).logits(PROMPT_IDS), reference)
    index_path.write_text("{not json")
    np.testing.assert_array_equal(deeproots.load(model_copy, context=64).logits(PROMPT_IDS), reference)
    assert json.loads(index_path.read_text())["weights"][name][3] % 64 == 0  # rewritten whole


@pytest.mark.slow  # two loads, one packing
def test_the_bytes_of_the_first_load_decide_the_second(model_copy):
    """Bytes that fit the index are used as they are: the damage shows, so the cache really is what runs."""
    reference = deeproots.load(model_copy, context=64).logits(PROMPT_IDS)
    data_path = next(packed_cache_dir().glob("*.packed"))
    with open(data_path, "r+b") as file:
        file.write(b"\x00" * 1_000_000)  # the first weights' scales and values, zeroed
    assert not np.array_equal(deeproots.load(model_copy, context=64).logits(PROMPT_IDS), reference)


@pytest.mark.slow  # two loads and two packings
def test_a_changed_model_file_gets_a_new_cache_which_replaces_the_old(model_copy, tmp_path):
    deeproots.load(model_copy, context=64)
    old = PackedCache.for_file(model_copy).data_path
    stat = os.stat(model_copy)
    os.utime(model_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert PackedCache.for_file(model_copy).data_path != old
    gone = tmp_path / "gone.gguf"  # a cached file deleted since: its cache goes too
    shutil.copyfile(model_copy, gone)
    deeproots.load(gone, context=64)
    gone.unlink()
    deeproots.load(model_copy, context=64)
    assert [path.name for path in packed_cache_dir().glob("*.packed")] == \
        [PackedCache.for_file(model_copy).data_path.name]


def test_the_cache_can_be_switched_off(model_copy, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "0")
    model = deeproots.load(model_copy, context=64)
    assert cache_files() == []
    assert PackedCache.for_file(model_copy) is None
    assert not any(mapped_file(weight.data) for weight in packed_weights(model))  # packed into memory


@pytest.mark.slow  # two loads, both packing
def test_a_cache_that_cannot_be_written_costs_only_speed(model_copy, tmp_path, monkeypatch):
    """A home that is a file: no cache folder can be made, so the weights are packed into memory, as without one."""
    reference = deeproots.load(model_copy, context=64).logits(PROMPT_IDS)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("DEEPROOTS_HOME", str(tmp_path / "not-a-folder"))
    model = deeproots.load(model_copy, context=64)
    assert not any(mapped_file(weight.data) for weight in packed_weights(model))
    np.testing.assert_array_equal(model.logits(PROMPT_IDS), reference)


@pytest.mark.slow  # the float32 reference load
def test_the_reference_path_writes_no_cache(model_copy):
    deeproots.load(model_copy, context=64, reference=True)
    assert cache_files() == []


def test_removing_a_model_removes_its_caches(tmp_path, monkeypatch, smollm2_path):
    monkeypatch.setenv("DEEPROOTS_HOME", str(tmp_path / "home"))
    store = ModelStore()
    folder = store.home / "smollm2-135m"
    shutil.copytree(smollm2_path.parent, folder)  # the store's own layout: the file and its manifest
    deeproots.load(folder / smollm2_path.name, context=64)
    assert cache_files() == [".json", ".packed"]
    store.remove("smollm2-135m")
    assert cache_files() == []
