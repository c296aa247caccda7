"""Hermes / Qwen 2.5 / Qwen 3: each call is <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>."""

from __future__ import annotations

from .base import FunctionSpec, Marker, ParsedRegion, ToolFormat, call_schema, json_rule, loads_object, named_call

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesFormat(ToolFormat):
    name = "hermes"
    openings = (OPEN,)
    closing = CLOSE

    @staticmethod
    def recognizes(template_source: str) -> bool:
        return OPEN in template_source

    def parse(self, region: str) -> ParsedRegion:
        body = region.removeprefix(OPEN).removesuffix(CLOSE)
        return ParsedRegion([named_call(loads_object(body.strip(), "the call"))])

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
        return (f'{calls}\ncall: {marker(OPEN)} "\\n" body "\\n" {marker(CLOSE)}\n'
                f"body: {json_rule(call_schema(functions))}\n")
