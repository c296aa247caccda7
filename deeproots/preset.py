"""Presets: a base model with a system prompt, sampling defaults and an optional chat template override.

A Presetfile is Ollama's Modelfile cut down to what deeproots uses (docs/cli.md):

    # comments and blank lines are skipped
    FROM smollm2-135m                 # a store name, a known model name or a path (required, once)
    SYSTEM You are a terse assistant.
    PARAMETER temperature 0.3         # repeatable; `stop` may be given several times
    PARAMETER stop "\\n\\n"
    TEMPLATE \"\"\"{% for m in messages %}...{% endfor %}\"\"\"   # a Jinja2 chat template, as in HF and GGUF files

A value may be written bare (to the end of the line), in "double quotes" (with \\n, \\t, \\" and \\\\ escapes) or in
\"\"\"triple quotes\"\"\" spanning lines (taken as written). `deeproots create NAME -f FILE` stores one under
<store>/presets/NAME.preset; `run NAME`, `chat NAME` and `show NAME` then use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError, RequestError
from .home import store_home
from .store import NAME_PATTERN

# Parameter name -> its type; Ollama's names for max tokens and context are accepted as aliases.
PARAMETERS: dict[str, type] = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
                               "repeat_penalty": float, "presence_penalty": float, "frequency_penalty": float,
                               "seed": int, "max_tokens": int, "stop": str, "ctx": int}
ALIASES = {"num_predict": "max_tokens", "num_ctx": "ctx"}

SUFFIX = ".preset"
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}


class PresetError(RequestError):
    """A Presetfile that does not parse: names the line."""


def unescape(text: str) -> str:
    """Backslash escapes as llama.cpp reads them in --stop and prompts: \\n \\t \\r \\\\ \\" (others kept as written)."""
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m[1], m[0]), text)


def escape(text: str) -> str:
    """The inverse of unescape for a double-quoted value."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def parse_parameter(name: str, value: str) -> tuple[str, Any]:
    """(canonical name, typed value) of `PARAMETER name value` or `/set parameter name value`."""
    name = ALIASES.get(name.lower(), name.lower())
    if name not in PARAMETERS:
        raise RequestError(f"unknown parameter {name!r}; parameters: {', '.join(PARAMETERS)}")
    try:
        typed = PARAMETERS[name](value)
    except ValueError:
        raise RequestError(f"{name} takes a{'n integer' if PARAMETERS[name] is int else ' number'}, "
                           f"got {value!r}") from None
    if name in ("max_tokens", "ctx") and typed < 1:
        raise RequestError(f"{name} must be at least 1, got {typed}")
    return name, typed


@dataclass
class Preset:
    base: str  # FROM: a store name, a catalog name or a path
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # stop: a list of strings
    template: str | None = None

    def set_parameter(self, name: str, value: Any) -> None:
        if name == "stop":
            self.parameters.setdefault("stop", []).append(value)
        else:
            self.parameters[name] = value

    def to_text(self) -> str:
        """The Presetfile for this preset (parse(to_text()) gives it back)."""
        lines = [f"FROM {self.base}"]
        if self.system is not None:
            lines.append(f'SYSTEM "{escape(self.system)}"')
        for name, value in self.parameters.items():
            for one in (value if name == "stop" else [value]):
                lines.append(f'PARAMETER {name} "{escape(one)}"' if name == "stop" else f"PARAMETER {name} {one}")
        if self.template is not None:
            if '"""' in self.template:
                raise RequestError('a template holding """ cannot be written to a Presetfile')
            lines.append(f'TEMPLATE """{self.template}"""')
        return "\n".join(lines) + "\n"


def parse(text: str, source: str = "Presetfile") -> Preset:
    base: str | None = None
    preset = Preset(base="")
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if rest.startswith('"""'):  # a triple-quoted value may span lines
            body = rest[3:]
            while '"""' not in body and index < len(lines):
                body += "\n" + lines[index]
                index += 1
            if '"""' not in body:
                raise PresetError(f'{source} line {number}: a """ value is not closed')
            value, tail = body.split('"""', 1)
            if tail.strip():
                raise PresetError(f'{source} line {number}: text after the closing """')
        elif rest.startswith('"'):
            quoted = QUOTED.fullmatch(rest)
            if quoted is None:
                raise PresetError(f'{source} line {number}: a "quoted" value is not closed')
            value = unescape(quoted[1])
        else:
            value = rest
        try:
            if keyword == "FROM":
                if base is not None:
                    raise PresetError("FROM is given twice")
                base = value.strip()
            elif keyword == "SYSTEM":
                preset.system = value
            elif keyword == "TEMPLATE":
                preset.template = value
            elif keyword == "PARAMETER":
                name, _, raw = value.strip().partition(" ")
                quoted = QUOTED.fullmatch(raw.strip())
                raw = unescape(quoted[1]) if quoted else raw.strip()
                preset.set_parameter(*parse_parameter(name, raw))
            else:
                raise PresetError(f"unknown instruction {keyword!r} (FROM, SYSTEM, PARAMETER, TEMPLATE)")
        except RequestError as error:
            raise PresetError(f"{source} line {number}: {error}") from None
    if not base:
        raise PresetError(f"{source} has no FROM line naming the base model")
    preset.base = base
    return preset


class PresetStore:
    """Presets kept as Presetfiles in <store>/presets/."""

    def __init__(self, home: Path | None = None):
        self.folder = (home or store_home()) / "presets"

    def path(self, name: str) -> Path:
        if not NAME_PATTERN.fullmatch(name):
            raise RequestError(f"{name!r} is not a valid name: use letters, digits, '.', '_' and '-' "
                               "(at most 64, starting with a letter or digit)")
        return self.folder / (name + SUFFIX)

    def get(self, name: str) -> Preset | None:
        if not NAME_PATTERN.fullmatch(name):
            return None
        path = self.folder / (name + SUFFIX)
        return parse(path.read_text(encoding="utf-8", errors="replace"), str(path)) if path.is_file() else None

    def names(self) -> list[str]:
        return sorted(p.name[:-len(SUFFIX)] for p in self.folder.glob("*" + SUFFIX)) if self.folder.is_dir() else []

    def save(self, name: str, preset: Preset) -> Path:
        path = self.path(name)
        if not preset.base.strip() or "\n" in preset.base:
            raise RequestError(f"the base model {preset.base!r} cannot be written to a Presetfile")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(preset.to_text(), encoding="utf-8")
        return path

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise ModelNotFoundError(f"no preset {name!r} in {self.folder}")
        path.unlink()
