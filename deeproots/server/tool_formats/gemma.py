"""Gemma 4: each call is <|tool_call>call:NAME{key:value,...}<tool_call|>, in Gemma's own argument syntax: bare keys,
strings between two <|"|> (nothing escaped), {} and [] nested, numbers and booleans bare.

llguidance cannot hold this syntax to a JSON schema (that would take a schema compiler of our own), so `auto` holds
a call to the syntax and an offered name, and the parsed arguments are then validated against the function's schema
(a call that fails comes back as content). A required call writes its arguments as JSON in the same wrapper, held
to the schema by llguidance."""

from __future__ import annotations

import json
from typing import Any

from .base import FunctionSpec, Marker, ParsedCall, ParsedRegion, ToolFormat, ToolParseError

OPEN, CLOSE, QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
CALL = "call:"
# A string's text: anything that does not hold <|"|> (nothing escapes it). The regex is the automaton "how much of
# <|"|> was just read", unrolled: MARKER_BEGUN reads a "<" and the marker's false starts after it (each ends in "<")
MARKER_BEGUN = r'<(<|\|<|\|"<|\|"\|<)*'
NO_QUOTE = rf'([^<]|{MARKER_BEGUN}([^<|]|\|[^<"]|\|"[^<|]|\|"\|[^<>]))*({MARKER_BEGUN}(\||\|"|\|"\|)?)?'
QUOTE_REGEX = r'<\|"\|>'
# A key as the template writes it: bare, up to the ":" (or, as its declarations write them, a quoted string)
KEY_STOPS = ":,{}[]<>\n"
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
# Required calls' JSON arguments, compact as Gemma writes its own
ARGUMENT_JSON = {"whitespace_flexible": False, "key_separator": ":", "item_separator": ","}
SYNTAX = r"""args: object
object: "{" (pair ("," pair)*)? "}"
pair: key ":" value
key: /[^:,{}\[\]<>" \t\n]+/ | string
value: string | object | array | /""" + NUMBER + r"""/ | "true" | "false" | "null" | "None"
array: "[" (value ("," value)*)? "]"
"""


class GemmaFormat(ToolFormat):
    name = "gemma"
    openings = (OPEN,)
    closing = CLOSE

    def parse(self, region: str) -> ParsedRegion:
        body = region.removeprefix(OPEN).removesuffix(CLOSE).strip()
        if not body.startswith(CALL) or "{" not in body:
            raise ToolParseError("a Gemma call is call:NAME{...}")
        brace = body.index("{")
        name, arguments = body[len(CALL):brace].strip(), body[brace:]
        value = json_arguments(arguments) if arguments[1:].lstrip().startswith('"') else gemma_arguments(arguments)
        self.check(name, value)
        return ParsedRegion([ParsedCall(name, json.dumps(value, ensure_ascii=False))])

    def check(self, name: str, arguments: dict[str, Any]) -> None:
        """The call names an offered function and its arguments validate against that function's schema."""
        if not self.functions:
            return
        specs = {spec.name: spec for spec in self.functions}
        if name not in specs:
            raise ToolParseError(f"{name!r} is not an offered function")
        import jsonschema  # only where a call is read (~80 ms to import)

        try:
            jsonschema.validate(arguments, specs[name].parameters)
        except jsonschema.ValidationError as error:
            raise ToolParseError(f"the arguments of {name!r} do not validate: {error.message}") from error

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        calls = "calls: call+" if parallel else "calls: call"
        if required:  # JSON arguments, held to each function's schema
            branches = " | ".join(f"{json.dumps(spec.name)} args_{i}" for i, spec in enumerate(functions))
            schemas = "".join(f"args_{i}: %json {json.dumps({**spec.parameters, 'x-guidance': ARGUMENT_JSON})}\n"
                              for i, spec in enumerate(functions))
            return f'{calls}\ncall: {marker(OPEN)} "{CALL}" ({branches}) {marker(CLOSE)}\n{schemas}'
        names = " | ".join(json.dumps(spec.name) for spec in functions)
        return (f'{calls}\ncall: {marker(OPEN)} "{CALL}" name args {marker(CLOSE)}\nname: {names}\n'
                f"{SYNTAX}{string_rule(marker)}")

    def prompt_messages(self, messages: list[dict], functions: list[FunctionSpec]) -> list[dict]:
        """Tool results as the template takes them: `tool_responses` of the assistant message that made the calls
        (the turn stays open), and the answer after them in that same turn."""
        rewritten: list[dict] = []
        names: dict[str, str] = {}
        for message in messages:
            last = rewritten[-1] if rewritten else None
            if message["role"] == "tool" and last is not None and last.get("tool_calls"):
                response = {"name": names.get(message.get("tool_call_id"), "unknown"),
                            "response": tool_response(message["content"])}
                last["tool_responses"] = [*last.get("tool_responses", []), response]
            elif (message["role"] == "assistant" and not message.get("tool_calls") and last is not None
                  and last.get("tool_responses") and not last.get("content")):
                last["content"] = message["content"]
            else:
                rewritten.append(dict(message))
                names |= {call["id"]: call["function"]["name"] for call in message.get("tool_calls") or []}
        return rewritten


def tool_response(content: str) -> Any:
    """A result the template writes as name{key:value,...} when it is a JSON object, else name{value:...}."""
    try:
        value = json.loads(content)
    except ValueError:
        return content
    return value if isinstance(value, dict) else content


def string_rule(marker: Marker) -> str:
    quote = marker(QUOTE)
    if quote.startswith("<["):  # a control token: plain text between two of them
        return f"string: {quote} /{NO_QUOTE}/ {quote}\n"
    return f"string: /{QUOTE_REGEX}{NO_QUOTE}{QUOTE_REGEX}/\n"  # one lexeme, so its closing is never read as text


def json_arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ToolParseError(f"the arguments are not JSON: {error}") from error
    if not isinstance(value, dict):
        raise ToolParseError("a call's arguments must be an object")
    return value


def gemma_arguments(text: str) -> dict[str, Any]:
    """The arguments {key:value,...} in Gemma's syntax, as JSON values."""
    reader = GemmaReader(text)
    value = reader.value()
    reader.skip_space()
    if reader.at < len(text) or not isinstance(value, dict):
        raise ToolParseError("the arguments are not one Gemma object")
    return value


class GemmaReader:
    """Reads one value of Gemma's argument syntax from `text` at `at` (whitespace between items is tolerated)."""

    def __init__(self, text: str):
        self.text, self.at = text, 0

    def skip_space(self) -> None:
        while self.at < len(self.text) and self.text[self.at].isspace():
            self.at += 1

    def value(self) -> Any:
        self.skip_space()
        rest = self.text[self.at:]
        if rest.startswith(QUOTE):
            return self.string()
        if rest.startswith("{"):
            return self.items("}", self.pair, dict)
        if rest.startswith("["):
            return self.items("]", self.value, list)
        return self.bare()

    def string(self) -> str:
        end = self.text.find(QUOTE, self.at + len(QUOTE))
        if end < 0:
            raise ToolParseError("a string is not closed")
        value, self.at = self.text[self.at + len(QUOTE):end], end + len(QUOTE)
        return value

    def items(self, closing: str, item, build) -> Any:
        self.at += 1
        found = []
        self.skip_space()
        while not self.text.startswith(closing, self.at):
            if found:
                self.expect(",")
            found.append(item())
            self.skip_space()
            if self.at >= len(self.text):
                raise ToolParseError(f"a {closing!r} is missing")
        self.at += 1
        return build(found)

    def pair(self) -> tuple[str, Any]:
        self.skip_space()
        if self.text.startswith(QUOTE, self.at):
            key = self.string()
        else:
            start = self.at
            while self.at < len(self.text) and self.text[self.at] not in KEY_STOPS:
                self.at += 1
            key = self.text[start:self.at].strip()
            if not key:
                raise ToolParseError(f"a key is missing at {start}")
        self.skip_space()
        self.expect(":")
        return key, self.value()

    def expect(self, text: str) -> None:
        self.skip_space()
        if not self.text.startswith(text, self.at):
            raise ToolParseError(f"{text!r} expected at {self.at}")
        self.at += len(text)

    def bare(self) -> Any:
        """true, false, null (None, as Jinja prints it), or a JSON number."""
        start = self.at
        while self.at < len(self.text) and self.text[self.at] not in ",}] \t\n":
            self.at += 1
        word = self.text[start:self.at]
        if word in ("None", "null"):
            return None
        if word in ("true", "false"):
            return word == "true"
        try:
            number = json.loads(word)
        except ValueError:
            number = None
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise ToolParseError(f"{word!r} is not a Gemma value")
        return number
