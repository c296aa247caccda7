"""Tool-call formats, one small module each, chosen by what the model's chat template writes (not the file name).

To add a format: subclass ToolFormat in a module of its own and put it in FORMATS before the generic fallback.
"""

from __future__ import annotations

import re

from .base import FunctionSpec, ParsedCall, ParsedRegion, ToolFormat, ToolParseError
from .generic import GenericFormat
from .hermes import HermesFormat
from .llama3 import Llama3Format
from .mistral import MistralFormat

FORMATS: tuple[type[ToolFormat], ...] = (MistralFormat, HermesFormat, Llama3Format)
_USES_TOOLS = re.compile(r"\btools\b")


def renders_tools(template_source: str) -> bool:
    """Whether the template reads the `tools` variable (else tools are described by the generic format)."""
    return bool(_USES_TOOLS.search(template_source))


def tool_format_for(template_source: str) -> ToolFormat:
    """The format the template teaches the model; the generic JSON form where it knows no tools."""
    if renders_tools(template_source):
        for format_class in FORMATS:
            if format_class.recognizes(template_source):
                return format_class()
    return GenericFormat()


__all__ = ["FORMATS", "FunctionSpec", "ParsedCall", "ParsedRegion", "ToolFormat", "ToolParseError",
           "renders_tools", "tool_format_for"]
