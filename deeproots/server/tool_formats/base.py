"""What every tool-call format is: where a call starts and ends in the model's text, how a call's text becomes
(name, arguments), and the llguidance grammar that text must follow once a call has started."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

# The JSON a model was trained on in these templates is Python's json.dumps / Jinja's tojson: ", " and ": " between
# items, no other whitespace (flexible whitespace lets a small model pad forever).
CALL_JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


class ToolParseError(ValueError):
    """A call region's text is not a call of the format: it goes back to the client as content."""


@dataclass(frozen=True)
class FunctionSpec:
    """A function the request offers: its name and the JSON schema of its arguments."""
    name: str
    description: str | None
    parameters: dict[str, Any]

    def as_tool(self) -> dict[str, Any]:
        """The OpenAI tool object, as chat templates expect it in their `tools` variable."""
        described = {} if self.description is None else {"description": self.description}
        return {"type": "function", "function": {"name": self.name, **described, "parameters": self.parameters}}


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class ParsedRegion:
    calls: list[ParsedCall]
    text: str = ""  # an answer the region carried instead of calls (the generic format's "response")


# Writes a marker of the format (e.g. "<tool_call>") in Lark: a special-token reference when the vocabulary has it as
# a control token (which plain text never matches), else a string literal.
Marker = Callable[[str], str]


class ToolFormat:
    """A family's tool-call format. Subclasses set the class attributes and implement parse() and grammar()."""
    name: ClassVar[str]
    openings: ClassVar[tuple[str, ...]]  # text that starts a call region; ("",): the whole answer is the region
    closing: ClassVar[str | None]  # text that ends a region; None: the region runs to the end of the answer

    @staticmethod
    def recognizes(template_source: str) -> bool:
        raise NotImplementedError

    def parse(self, region: str) -> ParsedRegion:
        """The calls in one region's text (from its opening through its closing); ToolParseError if it holds none."""
        raise NotImplementedError

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        """Lark rules whose top rule `calls` is the answer from the first opening on (`required`: the whole
        answer); the caller adds `start`."""
        raise NotImplementedError

    def prompt_messages(self, messages: list[dict], functions: list[FunctionSpec]) -> list[dict]:
        """The conversation as this format's template takes it (most take it as is)."""
        return messages


def call_schema(functions: list[FunctionSpec], arguments_key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call {"name": ..., arguments_key: {...}}: one branch per function, name first."""
    branches = [{"type": "object", "additionalProperties": False, "required": ["name", arguments_key],
                 "properties": {"name": {"const": spec.name}, arguments_key: spec.parameters}}
                for spec in functions]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def json_rule(schema: dict[str, Any]) -> str:
    """An inline %json rule of Lark, with the separators the templates write."""
    return "%json " + json.dumps({**schema, "x-guidance": CALL_JSON_OPTIONS})


def loads_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ToolParseError(f"{what} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ToolParseError(f"{what} is not a JSON object")
    return value


def named_call(value: Any, arguments_key: str = "arguments") -> ParsedCall:
    """A call from {"name": str, arguments_key: object or its JSON text}."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ToolParseError("a call needs a string name")
    arguments = value.get(arguments_key, {})
    if isinstance(arguments, str):
        arguments = loads_object(arguments, "the arguments")
    if not isinstance(arguments, dict):
        raise ToolParseError("a call's arguments must be a JSON object")
    return ParsedCall(value["name"], json.dumps(arguments, ensure_ascii=False))
