"""From a ChatCompletionRequest (whatever API it came through) to what the engine and the parser need: the prompt
ids rendered by the model's own template (its tools, thinking switch and extra variables), the constraint, and how
to read the answer (thinking, tool-call format).

Every check of the conversation and the tools is here, so every API refuses the same mistakes the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from ..engine.grammar import LazyConstraint
from ..errors import RequestError
from ..generate import TokenConstraint
from ..tokenizer import ChatTemplate, Tokenizer
from .chat_parse import THINK_CLOSE, THINK_OPEN, ChoiceParser, Thinking
from .errors import APIError
from .schemas import ChatCompletionRequest, ChatMessage
from .tool_formats import FunctionSpec, ToolFormat, renders_tools, tool_format_for
from .tool_formats.generic import calls_as_text

NO_ARGUMENTS = {"type": "object", "properties": {}}
PROMPT_TAIL_TOKENS = 16  # enough of the prompt's end to see whether the template opened <think>


@dataclass
class ChatPlan:
    prompt_ids: list[int]
    constraint: Callable[[], TokenConstraint] | None
    thinking: Thinking | None
    tool_format: ToolFormat | None  # None: no tools in play (none offered, or tool_choice "none")

    def parser(self) -> ChoiceParser:
        return ChoiceParser(self.thinking, self.tool_format)


def plan_chat(served, body: ChatCompletionRequest) -> ChatPlan:
    """Validate the request against the served model and render its prompt (runs off the event loop)."""
    template = served.model.template
    if template is None:
        raise APIError(400, "this model file has no chat template; use /v1/completions with a plain prompt",
                       param="messages")
    check_tool_messages(body.messages)
    functions, required = offered_functions(body)
    if functions and body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format cannot be combined with tools; send tool_choice \"none\" or no "
                            "response_format", param="response_format")
    tool_format = tool_format_for(template.source) if functions else None
    messages = [template_message(message, index) for index, message in enumerate(body.messages)]
    variables = template_variables(body)
    if tool_format:
        messages = tool_format.prompt_messages(messages, functions)
        if renders_tools(template.source):
            variables["tools"] = [spec.as_tool() for spec in functions]
    elif not renders_tools(template.source):
        messages = calls_as_text(messages)  # earlier calls still reach a template that knows none
    tokenizer = served.model.tokenizer
    prompt_ids = encode(template, tokenizer, messages, variables)
    thinking = thinking_of(template, tokenizer, prompt_ids)
    if tool_format:
        constraint = tool_constraint(served, tool_format, functions, body, required, thinking)
    else:
        constraint = response_format_constraint(served, body)
    return ChatPlan(prompt_ids, constraint, thinking, tool_format)


def encode(template: ChatTemplate, tokenizer: Tokenizer, messages: list[dict], variables: dict) -> list[int]:
    try:
        return template.encode(messages, tokenizer, **variables)
    except RequestError as error:  # the template's raise_exception(): the conversation is the client's
        raise APIError(400, str(error), param="messages") from error


def template_message(message: ChatMessage, index: int) -> dict[str, Any]:
    """A message as chat templates read it (transformers' convention): a call's arguments as an object."""
    rendered: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:  # Qwen 3's template writes it back into the latest turns
        rendered["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name,
                          "arguments": call_arguments(call.function.arguments,
                                                      f"messages[{index}].tool_calls[{number}].function.arguments")}}
            for number, call in enumerate(message.tool_calls)]
    return rendered


def call_arguments(text: str, param: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise APIError(400, "a tool call's arguments must be the JSON text of an object", param=param)
    return value


def check_tool_messages(messages: list[ChatMessage]) -> None:
    """Each tool message answers a call an earlier assistant message made, and not one answered already."""
    open_calls: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            open_calls |= {call.id for call in message.tool_calls}
        elif message.role == "tool":
            if message.tool_call_id is None:
                raise APIError(400, "a tool message needs the tool_call_id of the call it answers",
                               param=f"messages[{index}].tool_call_id")
            if message.tool_call_id not in open_calls:
                raise APIError(400, f"tool message answers {message.tool_call_id!r}, which no earlier assistant "
                                    "message called (or which was answered already)",
                               param=f"messages[{index}].tool_call_id")
            open_calls.discard(message.tool_call_id)


def offered_functions(body: ChatCompletionRequest) -> tuple[list[FunctionSpec], bool]:
    """The functions the model may call under tool_choice, and whether it must call one."""
    choice = body.tool_choice
    tools = body.tools or []
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return [], False
    names = [tool.function.name for tool in tools]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise APIError(400, f"two tools are named {name!r}", param=f"tools[{index}].function.name")
    functions = [FunctionSpec(tool.function.name, tool.function.description, tool.function.parameters or NO_ARGUMENTS)
                 for tool in tools]
    if choice == "none":
        return [], False
    if choice is None or choice in ("auto", "required"):
        return functions, choice == "required"
    named = [spec for spec in functions if spec.name == choice.function.name]
    if not named:
        raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not among the tools "
                            f"({', '.join(names)})", param="tool_choice.function.name")
    return named, True


def template_variables(body: ChatCompletionRequest) -> dict[str, Any]:
    """chat_template_kwargs, with reasoning_effort "none" as Qwen 3's switch (enable_thinking=False); the client's
    own enable_thinking wins."""
    variables = dict(body.chat_template_kwargs or {})
    reserved = {"messages", "tools", "add_generation_prompt"} & variables.keys()
    if reserved:
        raise APIError(400, f"chat_template_kwargs cannot set {', '.join(sorted(reserved))}",
                       param="chat_template_kwargs")
    if body.reasoning_effort is not None:
        variables.setdefault("enable_thinking", body.reasoning_effort != "none")
    return variables


def thinking_of(template: ChatTemplate, tokenizer: Tokenizer, prompt_ids: list[int]) -> Thinking | None:
    """A thinking model's parse: templates that speak of </think> (Qwen 3, DeepSeek-R1); `opened` when the prompt
    ends inside <think> (the model's answer then starts with its thinking); None when the prompt ends with an empty
    thinking already closed (the switch is off)."""
    if THINK_CLOSE not in template.source:
        return None
    tail = tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:])
    if tail.rstrip().endswith(THINK_CLOSE):  # the template wrote an empty thinking: Qwen 3's enable_thinking=False
        return None
    return Thinking(opened=tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE))


def control_marker(tokenizer: Tokenizer) -> Callable[[str], str]:
    """Writes a format's marker in Lark: its control token by id where the vocabulary has one, else the text."""
    def marker(text: str) -> str:
        found = tokenizer.find_control_tokens(text)
        if len(found) == 1 and found[0][:2] == (0, len(text)):
            return f"<[{found[0][2]}]>"
        return json.dumps(text)

    return marker


def tool_constraint(served, tool_format: ToolFormat, functions: list[FunctionSpec], body: ChatCompletionRequest,
                    required: bool, thinking: Thinking | None) -> Callable[[], TokenConstraint]:
    """The grammar of the format's calls with these functions' schemas: from the answer's start when a call is
    required (or the format is the whole answer), else lazily from the format's opening (in the answer, after any
    thinking)."""
    for index, spec in enumerate(functions):  # name the tool whose schema llguidance refuses
        try:
            served.grammars.json_schema(spec.parameters)
        except RequestError as error:
            raise APIError(400, f"tool {spec.name!r}: {str(error).removeprefix('response_format: ')}",
                           param=f"tools[{index}].function.parameters") from error
    tokenizer = served.model.tokenizer
    marker = control_marker(tokenizer)
    whole_answer = required or tool_format.openings == ("",)
    rules = tool_format.grammar(functions, body.parallel_tool_calls, required, marker)
    try:
        grammar = served.grammars.lark(start_rule(whole_answer, thinking, marker) + rules, "tools")
    except RequestError as error:
        raise APIError(400, str(error), param="tools") from error
    if whole_answer:
        return grammar.constraint
    answer_start = thinking.answer_start if thinking else (lambda text: 0)
    return lambda: LazyConstraint(grammar, tokenizer, tool_format.openings, answer_start)


def start_rule(whole_answer: bool, thinking: Thinking | None, marker: Callable[[str], str]) -> str:
    """The grammar's start: the calls alone (a lazy grammar starts at the opening), or the whole answer, which for
    a thinking model may first think (must, when the prompt opened the thinking) before it calls."""
    if not whole_answer or thinking is None:
        return "start: calls\n"
    think = "thought" if thinking.opened else f"({marker(THINK_OPEN)} thought)?"
    close = THINK_CLOSE.replace("/", "\\/")  # inside a /regex/
    return (f"start: {think} blank? calls\n"
            f"thought[lazy]: /(.|\\n)*{close}/\n"
            "blank: /[ \\n]{1,3}/\n")  # bounded: a small model could pad forever


def response_format_constraint(served, body: ChatCompletionRequest) -> Callable[[], TokenConstraint] | None:
    """The per-sequence constraint factory of the request's response_format, or None; a bad schema is a 400."""
    form = body.response_format
    if form is None or form.type == "text":
        return None
    if form.type == "json_schema":
        if form.json_schema is None or form.json_schema.schema_ is None:
            raise APIError(400, "response_format json_schema needs json_schema.schema",
                           param="response_format.json_schema")
        schema = form.json_schema.schema_
    else:
        schema = None  # json_object: any JSON object
    try:
        return served.grammars.json_schema(schema).constraint
    except RequestError as error:  # a refused schema; anything else the compiler raises is our bug (a 500)
        raise APIError(400, str(error), param="response_format") from error
