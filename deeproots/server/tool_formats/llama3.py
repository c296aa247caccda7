"""Llama 3.x JSON calls: the answer is {"name": ..., "parameters": {...}}, after <|python_tag|> in Llama 3.1."""

from __future__ import annotations

from .base import FunctionSpec, Marker, ParsedRegion, ToolFormat, call_schema, json_rule, loads_object, named_call

PYTHON_TAG = "<|python_tag|>"
JSON_OPENING = '{"name"'


class Llama3Format(ToolFormat):
    name = "llama3-json"
    openings = (PYTHON_TAG, JSON_OPENING)
    closing = None

    @staticmethod
    def recognizes(template_source: str) -> bool:
        # Llama 3.2/3.3 ask for {"name": function name, "parameters": ...}; 3.1 also names <|python_tag|>
        return '"parameters": dictionary of argument name' in template_source or PYTHON_TAG in template_source

    def parse(self, region: str) -> ParsedRegion:
        body = region.removeprefix(PYTHON_TAG).strip()
        value = loads_object(body, "the call")
        return ParsedRegion([named_call(value, "parameters" if "parameters" in value else "arguments")])

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        # One call per answer: the templates refuse to render more than one ("only supports single tool-calls")
        return (f"calls: body | {marker(PYTHON_TAG)} body\n"
                f"body: {json_rule(call_schema(functions, 'parameters'))}\n")
