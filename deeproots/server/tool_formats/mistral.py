"""Mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] to the end of the answer."""

from __future__ import annotations

import json
import re

from .base import (FunctionSpec, Marker, ParsedRegion, ToolFormat, ToolParseError, call_schema, json_rule,
                   named_call)

OPEN = "[TOOL_CALLS]"
ID_LENGTH = 9  # Mistral's templates refuse any other call id ("alphanumeric strings with length 9")


class MistralFormat(ToolFormat):
    name = "mistral"
    openings = (OPEN,)
    closing = None

    @staticmethod
    def recognizes(template_source: str) -> bool:
        return OPEN in template_source

    def parse(self, region: str) -> ParsedRegion:
        try:
            value = json.loads(region.removeprefix(OPEN).strip())
        except ValueError as error:
            raise ToolParseError(f"the calls are not JSON: {error}") from error
        calls = value if isinstance(value, list) else [value]
        if not calls:
            raise ToolParseError("an empty list of calls")
        return ParsedRegion([named_call(call) for call in calls])

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        schema = {"type": "array", "items": call_schema(functions), "minItems": 1, **({} if parallel else {"maxItems": 1})}
        return f"calls: {marker(OPEN)} body\nbody: {json_rule(schema)}\n"

    def prompt_messages(self, messages: list[dict], functions: list[FunctionSpec]) -> list[dict]:
        """Call ids shortened to the 9 alphanumerics the template demands, the same way on both sides of a call."""
        def short(call_id: str) -> str:
            return re.sub(r"[^A-Za-z0-9]", "", call_id)[-ID_LENGTH:].rjust(ID_LENGTH, "0")

        rewritten = []
        for message in messages:
            message = dict(message)
            if "tool_call_id" in message:
                message["tool_call_id"] = short(message["tool_call_id"])
            if "tool_calls" in message:
                message["tool_calls"] = [{**call, "id": short(call["id"])} for call in message["tool_calls"]]
            rewritten.append(message)
        return rewritten
