"""What a server can answer with: every model of the store and every `-m` model, by name, and the alias table.

Nothing here loads a model: a source is a name and a file whose header is read (once, when first asked) for
listings and memory estimates. The pool (pool.py) loads sources on demand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..config import default_context
from ..errors import DeeprootsError, RequestError
from ..inspect import ModelSummary, summarize
from ..store import CATALOG, ModelStore
from ..suggest import did_you_mean
from .errors import APIError

OLLAMA_TAG = ":latest"  # Ollama clients name models "name:tag"; ours have no tags, so "name:latest" is "name"


@dataclass(eq=False)
class ModelSource:
    """One servable model: its served name, its file (or Hugging Face folder) and, for store models, the sha256
    the store checked."""
    name: str
    path: Path
    digest: str | None = None
    requested_context: int | None = None  # the server's --ctx; None: the model's default

    @cached_property
    def summary(self) -> ModelSummary | None:
        """The file's header as `deeproots inspect` reads it; None for a file that cannot be read (its load fails
        with the reason, the listings just say less)."""
        try:
            return summarize(self.path)
        except (DeeprootsError, OSError):
            return None

    @property
    def context(self) -> int:
        """Tokens a sequence may hold once loaded, as the loader decides (loader.load_model_file)."""
        return self.requested_context or default_context(self.summary.config if self.summary else None)

    @property
    def modified(self) -> float:
        return os.path.getmtime(self.path)


@dataclass
class ServableModels:
    """The name table: models by name, aliases to names, and the default (the first `-m`)."""
    sources: dict[str, ModelSource]
    default: str
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for alias, target in list(self.aliases.items()):
            if alias in self.sources:
                raise RequestError(f"--alias {alias}={target}: {alias!r} already names a model")
            model = self.aliases.get(target, target)  # an alias of an alias serves the model that one serves
            if model not in self.sources:
                known = [*self.sources, *self.aliases]
                raise RequestError(f"--alias {alias}={target}: {unknown_model_text(target, known)}")
            self.aliases[alias] = model

    @property
    def names(self) -> list[str]:
        """The default first (the chat page takes /v1/models' first entry), then the others, then the aliases."""
        return [self.default, *sorted(set(self.sources) - {self.default}), *sorted(self.aliases)]

    def resolve(self, name: str | None) -> ModelSource:
        """The source a request's `model` names (None: the default), or a 404 with the closest names."""
        if name is None:
            return self.sources[self.default]
        for candidate in (name, name.removesuffix(OLLAMA_TAG)):
            candidate = self.aliases.get(candidate, candidate)
            if candidate in self.sources:
                return self.sources[candidate]
        raise APIError(404, unknown_model_text(name, self.names), param="model", code="model_not_found")


def unknown_model_text(name: str, known: list[str]) -> str:
    return f"model {name!r} does not exist{did_you_mean(name, known, n=3, cutoff=0.5)} (this server serves: " \
           f"{', '.join(known)})"


def parse_alias(text: str) -> tuple[str, str]:
    """'gpt-4o-mini=smollm2-135m' -> ('gpt-4o-mini', 'smollm2-135m')."""
    alias, sep, target = (part.strip() for part in text.partition("="))
    if not sep or not alias or not target:
        raise RequestError(f"--alias takes NAME=MODEL, got {text!r}")
    return alias, target


def servable_models(model_args: list[str], alias_args: list[str], store: ModelStore,
                    requested_context: int | None = None) -> ServableModels:
    """Each `-m` (a store name, or a file or folder served under its file name without .gguf, as one model server
    always did), the first the default, then every other stored model under its store name. A stored model that a
    `-m` path names too is an alias of that path's name (one file, one load)."""
    paths = [store.resolve(argument, pull=argument in CATALOG) for argument in model_args]  # pulls, as before
    stored = {model.path.resolve(): model for model in store.list()}
    sources: dict[str, ModelSource] = {}
    aliases = dict(parse_alias(text) for text in alias_args)
    names = []
    for argument, path in zip(model_args, paths):
        known = stored.get(path.resolve())
        name = argument if known is not None and known.name == argument else path.name if path.is_dir() else path.stem
        if name in sources and sources[name].path.resolve() != path.resolve():
            raise RequestError(f"-m {argument}: the name {name!r} already serves {sources[name].path}")
        sources[name] = ModelSource(name, path, known.sha256 if known else None, requested_context)
        names.append(name)
    by_path = {source.path.resolve(): name for name, source in sources.items()}
    for path, model in stored.items():
        if path in by_path:
            if by_path[path] != model.name:
                aliases.setdefault(model.name, by_path[path])
        else:
            sources[model.name] = ModelSource(model.name, model.path, model.sha256, requested_context)
    return ServableModels(sources, names[0], aliases)
