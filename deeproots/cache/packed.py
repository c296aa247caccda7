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

A load that packs writes each weight straight into the new cache file, through a shared map of it (`reserve`), and
runs on those pages: they are the file's, which the kernel writes back and may drop and re-read, so even the first
load of a model nearly the size of RAM holds little memory of its own (docs/benchmarks.md measures it on a 3.9 GB
mixture of experts). Where the file cannot be written, weights are packed into the process's memory instead.
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

PACK_FORMAT = 2  # bump whenever a packed layout (csrc/qgemm.h) changes (2: Q5_0 packed as itself, not as Q8_0)
ALIGNMENT = 64  # what the kernels expect of a weight's first byte
CACHE_ENV = "DEEPROOTS_PACKED_CACHE"
# Packed weights take at most this many times their bytes in the model file (MXFP4 widens to Q8_0: 34/17), plus
# alignment: the address space the file being written is mapped with (sparse: disk blocks are taken as used).
GROWTH_BOUND, GROWTH_SLACK = 2, 64 << 20


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
        self._writer: _CacheWriter | None = None  # the new cache file, opened by the first reserve()
        self._writer_tried = False
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

    def reserve(self, nbytes: int) -> np.ndarray | None:
        """Writable, 64-byte aligned space for packed bytes in the cache file this load writes; None when the file
        cannot be written (the caller packs into memory instead)."""
        if not self._writer_tried:
            self._writer_tried = True
            capacity = GROWTH_BOUND * os.path.getsize(self.source) + GROWTH_SLACK
            self._writer = _CacheWriter.create(self.data_path.with_name(f"{self.data_path.name}.{os.getpid()}.tmp"),
                                               capacity)
        return self._writer.reserve(nbytes) if self._writer is not None else None

    def add(self, name: str, weight: PackedWeight) -> None:
        """A weight this load had to pack (best into space from reserve()): save() writes the cache anew."""
        self._weights[name] = weight
        self._repacked = True

    def save(self) -> None:
        """Complete the new cache file when any weight was repacked (those of this load that lie elsewhere, mapped
        from the old cache or packed into memory, are copied in), then its index; a failure only costs speed."""
        writer = self._writer
        if not self._repacked or writer is None:
            return
        self._repacked = False
        index = {}
        for name, weight in self._weights.items():
            offset = writer.offset_of(weight.data)
            if offset is None:
                space = writer.reserve(weight.nbytes)
                if space is None:
                    writer.discard()
                    return
                space[:] = weight.data
                offset = writer.offset_of(space)
            index[name] = [int(weight.ggml_type), weight.in_features, weight.out_features, offset, weight.nbytes]
        index_tmp = self.index_path.with_name(f"{self.index_path.name}.{os.getpid()}.tmp")
        try:
            writer.finish()
            index_tmp.write_text(json.dumps({"format": PACK_FORMAT, "source": self.source, "size": writer.size,
                                             "weights": index}))
            os.replace(writer.path, self.data_path)  # the bytes first: an index never names bytes not yet there
            os.replace(index_tmp, self.index_path)
        except OSError:
            writer.discard()
            index_tmp.unlink(missing_ok=True)
            return
        # Caches of this file's earlier versions, and of files that are gone, would only take disk space.
        _remove_caches(lambda source: source == self.source or not os.path.exists(source), keep=self.index_path)


class _CacheWriter:
    """A cache data file being written through a shared read-write map of `capacity` bytes (a sparse file until
    reserve() allocates its blocks: a full disk is an OSError there, never a SIGBUS on a page written later).
    Two processes packing the same model write their own files (the pid in the name), then replace."""

    def __init__(self, path: Path, file, mapping: mmap.mmap):
        self.path, self._file, self._mapping = path, file, mapping
        self._base = np.frombuffer(mapping, dtype=np.uint8)  # (capacity,)
        self.size = 0  # bytes reserved so far

    @classmethod
    def create(cls, path: Path, capacity: int) -> _CacheWriter | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(path, "w+b")
        except OSError:
            return None
        try:
            file.truncate(capacity)
            return cls(path, file, mmap.mmap(file.fileno(), capacity, access=mmap.ACCESS_WRITE))
        except (OSError, ValueError):
            file.close()
            path.unlink(missing_ok=True)
            return None

    def reserve(self, nbytes: int) -> np.ndarray | None:
        offset = -(-self.size // ALIGNMENT) * ALIGNMENT
        if offset + nbytes > len(self._base) or self._file.closed:
            return None
        try:
            _allocate(self._file.fileno(), offset, nbytes)
        except OSError:
            return None
        self.size = offset + nbytes
        return self._base[offset:offset + nbytes]

    def offset_of(self, data: np.ndarray) -> int | None:
        """Where `data` lies in this file, if it is a view of its map."""
        offset = data.ctypes.data - self._base.ctypes.data
        return offset if 0 <= offset and offset + data.nbytes <= self.size else None

    def finish(self) -> None:
        """Cut the file to the bytes reserved (the map's pages past them are never read)."""
        self._file.truncate(self.size)
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _allocate(fd: int, offset: int, nbytes: int) -> None:
    """Take the disk blocks of [offset, offset + nbytes) now (OSError when the disk is full)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, offset, nbytes)
    else:  # no fallocate (macOS): write the zeros
        os.pwrite(fd, bytes(nbytes), offset)


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
