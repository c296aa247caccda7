"""Repacked weights kept on disk, so the second load of a model file maps them instead of repacking them.

Repacking the default model's 96 MB (kernels/layouts.py) is a strided copy into fresh memory: `deeproots run`
starts in 0.54 s with it, 0.42 s mapping the cache instead (docs/benchmarks.md). The cache file is read through a read-only memory map, as llama.cpp reads a GGUF: its pages
come from the file cache, shared by every process running the model.

A cache belongs to one model file: its key hashes the file's resolved path, inode, size and modification time with
the packed layouts' version (PACK_FORMAT), so a changed file (or layout) never meets a stale cache. Each cache is two
files in `<store>/packed/`: KEY.packed (the weights' bytes, each at a 64-byte aligned offset) and KEY.json (the index:
name -> type, shape, offset, size), written after the bytes, so an index always describes complete bytes. Nothing in
them is trusted: an entry that does not fit the file, the weight asked for or the kernel's layout makes the load
repack that weight and rewrite the cache. Set DEEPROOTS_PACKED_CACHE=0 to neither read nor write caches.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..home import store_home
from ..kernels import PackedWeight, packed_nbytes
from ..quant import GGMLType

PACK_FORMAT = 1  # bump whenever a packed layout (csrc/qgemm.h) changes
ALIGNMENT = 64  # what the kernels expect of a weight's first byte
CACHE_ENV = "DEEPROOTS_PACKED_CACHE"


def packed_cache_dir() -> Path:
    return store_home() / "packed"  # read at each call: tests point the home elsewhere


class PackedCache:
    """The packed weights of one model file: those found on disk, and those packed by this load to be saved."""

    def __init__(self, source: str, key: str, folder: Path):
        self.source = source
        self.data_path = folder / f"{key}.packed"
        self.index_path = folder / f"{key}.json"
        self._index: dict[str, list] = {}
        self._mapping: mmap.mmap | None = None
        self._weights: dict[str, PackedWeight] = {}  # everything this load uses, in order
        self._repacked = False  # some weight was not on disk: save() rewrites the cache
        self._load()

    @classmethod
    def for_file(cls, path: str | os.PathLike) -> PackedCache | None:
        """The cache of the model file at `path`, or None when caching is switched off."""
        if os.environ.get(CACHE_ENV, "1") == "0":
            return None
        source = os.path.realpath(path)
        stat = os.stat(source)
        identity = f"{PACK_FORMAT}|{source}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
        return cls(source, hashlib.sha256(identity.encode()).hexdigest()[:32], packed_cache_dir())

    def _load(self) -> None:
        try:
            index = json.loads(self.index_path.read_text())
            with open(self.data_path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError):
            return  # no cache yet, or one we cannot read: repack
        if not isinstance(index, dict) or index.get("format") != PACK_FORMAT or index.get("size") != size or \
                not isinstance(index.get("weights"), dict):
            if mapping is not None:
                mapping.close()
            return
        self._index, self._mapping = index["weights"], mapping

    def get(self, name: str, ggml_type: int, in_features: int, out_features: int) -> PackedWeight | None:
        """The weight `name` from disk, if the cache holds it with this type and shape; None otherwise."""
        entry = self._index.get(name)
        expected = [int(ggml_type), in_features, out_features]
        if self._mapping is None or not isinstance(entry, list) or len(entry) != 5 or entry[:3] != expected:
            return None
        offset, nbytes = entry[3], entry[4]
        if not (isinstance(offset, int) and isinstance(nbytes, int) and offset % ALIGNMENT == 0 and offset >= 0
                and nbytes == packed_nbytes(ggml_type, in_features, out_features)
                and offset + nbytes <= len(self._mapping)):
            return None
        data = np.frombuffer(self._mapping, dtype=np.uint8, count=nbytes, offset=offset)
        weight = PackedWeight(GGMLType(ggml_type), in_features, out_features, data)
        self._weights[name] = weight
        return weight

    def add(self, name: str, weight: PackedWeight) -> None:
        """A weight this load had to pack: save() writes the cache anew."""
        self._weights[name] = weight
        self._repacked = True

    def save(self) -> None:
        """Write every weight of this load to disk when any was repacked; a failure to write only costs speed."""
        if not self._repacked:
            return
        index, offset = {}, 0
        for name, weight in self._weights.items():
            offset = -(-offset // ALIGNMENT) * ALIGNMENT
            index[name] = [int(weight.ggml_type), weight.in_features, weight.out_features, offset, weight.nbytes]
            offset += weight.nbytes
        suffix = f".{os.getpid()}.tmp"  # two processes loading the same file at once write apart, then replace
        data_tmp, index_tmp = (path.with_name(path.name + suffix) for path in (self.data_path, self.index_path))
        try:
            self.data_path.parent.mkdir(parents=True, exist_ok=True)
            with open(data_tmp, "wb") as file:
                for name, weight in self._weights.items():
                    file.seek(index[name][3])
                    file.write(weight.data)
                file.truncate(offset)
            index_tmp.write_text(json.dumps({"format": PACK_FORMAT, "source": self.source, "size": offset,
                                             "weights": index}))
            os.replace(data_tmp, self.data_path)  # the bytes first: an index never names bytes not yet there
            os.replace(index_tmp, self.index_path)
        except OSError:
            for path in (data_tmp, index_tmp):
                path.unlink(missing_ok=True)
            return
        finally:
            self._repacked = False
        # Caches of this file's earlier versions, and of files that are gone, would only take disk space.
        _remove_caches(lambda source: source == self.source or not os.path.exists(source), keep=self.index_path)


def forget_caches_of(folder: Path) -> None:
    """Delete the packed caches of model files inside `folder` (a model removed from the store)."""
    inside = os.path.realpath(folder) + os.sep
    _remove_caches(lambda source: source.startswith(inside))


def _remove_caches(doomed: Callable[[str], bool], keep: Path | None = None) -> None:
    """Delete every cache (but `keep`'s) whose index names a source file `doomed` says goes."""
    cache_dir = packed_cache_dir()
    if not cache_dir.is_dir():
        return
    for index_path in cache_dir.glob("*.json"):
        try:
            source = json.loads(index_path.read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if index_path != keep and isinstance(source, str) and doomed(source):
            index_path.unlink(missing_ok=True)
            index_path.with_suffix(".packed").unlink(missing_ok=True)
