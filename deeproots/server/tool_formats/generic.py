"""For templates that know no tools (as llama.cpp's generic format): the tools are described in the system message,
and the whole answer is one JSON object, {"tool_calls": [...]} or {"response": "..."}, held to that by the grammar."""

from __future__ import annotations

import json

from .base import (FunctionSpec, Marker, ParsedRegion, ToolFormat, ToolParseError, call_schema, json_rule,
                   loads_object, named_call)

CALLS_FORM = '{"tool_calls": [{"name": "<function name>", "arguments": {<its arguments>}}]}'
RESPONSE_FORM = '{"response": "<your answer>"}'


class GenericFormat(ToolFormat):
    name = "generic-json"
    openings = ("",)  # the answer is the region
    closing = None

    @staticmethod
    def recognizes(template_source: str) -> bool:
        return True  # the fallback: chosen last

    def parse(self, region: str) -> ParsedRegion:
        value = loads_object(region.strip(), "the answer")
        if isinstance(value.get("response"), str):
            return ParsedRegion([], value["response"])
        calls = value.get("tool_calls")
        if not isinstance(calls, list) or not calls:
            raise ToolParseError('the answer has neither "tool_calls" nor "response"')
        return ParsedRegion([named_call(call) for call in calls])

    def grammar(self, functions: list[FunctionSpec], parallel: bool, required: bool, marker: Marker) -> str:
        return f"calls: {json_rule(answer_schema(functions, parallel, required))}\n"

    def prompt_messages(self, messages: list[dict], functions: list[FunctionSpec]) -> list[dict]:
        """The tools and the answer's form in the system message; earlier calls and results written as that JSON."""
        messages = calls_as_text(messages)
        instruction = tool_instruction(functions)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}, *messages[1:]]
        return [{"role": "system", "content": instruction}, *messages]


def calls_as_text(messages: list[dict]) -> list[dict]:
    """A conversation with calls for a template that knows none: an assistant's calls become its answer in this
    format's JSON, and the results a user turn (one for consecutive results, for templates that alternate)."""
    rewritten: list[dict] = []
    for message in messages:
        if message.get("tool_calls"):
            calls = [{"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
                     for call in message["tool_calls"]]
            rewritten.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
        elif message["role"] == "tool":
            result = json.dumps({"tool_response": {"tool_call_id": message.get("tool_call_id"),
                                                   "content": message["content"]}}, ensure_ascii=False)
            if rewritten and rewritten[-1].get("tool_results"):
                rewritten[-1] = {**rewritten[-1], "content": rewritten[-1]["content"] + "\n" + result}
            else:
                rewritten.append({"role": "user", "content": result, "tool_results": True})
        else:
            rewritten.append(message)
    return [{key: value for key, value in message.items() if key != "tool_results"} for message in rewritten]


def answer_schema(functions: list[FunctionSpec], parallel: bool, required: bool) -> dict:
    calls = {"type": "object", "additionalProperties": False, "required": ["tool_calls"],
             "properties": {"tool_calls": {"type": "array", "items": call_schema(functions), "minItems": 1,
                                           **({} if parallel else {"maxItems": 1})}}}
    if required:
        return calls
    response = {"type": "object", "additionalProperties": False, "required": ["response"],
                "properties": {"response": {"type": "string"}}}
    return {"anyOf": [calls, response]}


def tool_instruction(functions: list[FunctionSpec]) -> str:
    tools = "\n".join(json.dumps(spec.as_tool()["function"], ensure_ascii=False) for spec in functions)
    return ("You can call these tools (one JSON object per line):\n" + tools +
            "\n\nAnswer with one JSON object: " + CALLS_FORM + " to call tools, or " + RESPONSE_FORM +
            " to answer directly.")
