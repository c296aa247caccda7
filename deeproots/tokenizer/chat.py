"""Chat templates: the Jinja template a model file carries (or a built-in one for its family, see
builtin_templates.py), rendered in a sandbox as HF transformers does.

Templates are untrusted code from the file, so they run in jinja2's ImmutableSandboxedEnvironment with
the same options and helpers as `apply_chat_template` (trim_blocks, lstrip_blocks, loop controls,
raise_exception, strftime_now, a tojson that keeps non-ASCII text), so a template renders the same here.
ChatTemplate.encode turns a conversation into prompt token ids: every caller gets them there.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deeproots.errors import ModelFormatError, RequestError

from .builtin_templates import builtin_template

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

TEMPLATE_KEY = "tokenizer.chat_template"


class _GenerationTag(Extension):
    """{% generation %}...{% endgeneration %} marks the assistant's text for training masks; it renders as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


_ENVIRONMENT = _environment()


class ChatTemplate:
    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        if not isinstance(source, str):
            raise ModelFormatError("the chat template must be a string", field=TEMPLATE_KEY)
        try:
            self._template = _ENVIRONMENT.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelFormatError(f"the chat template does not parse: {exc.message} (template line {exc.lineno})",
                                   field=TEMPLATE_KEY) from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any], tokenizer: Tokenizer) -> ChatTemplate | None:
        """The file's default template, else the built-in one for its model family (None when neither),
        with its BOS and EOS tokens' text."""
        source = metadata.get(TEMPLATE_KEY)
        if source is None:
            source = builtin_template(metadata)
        if source is None:
            return None

        def text(token_id: int | None) -> str:
            return "" if token_id is None else tokenizer.token_text(token_id)

        return cls(source, bos_token=text(tokenizer.bos_id), eos_token=text(tokenizer.eos_id))

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for `messages`; `extra` reaches the template as variables (tools, documents, ...)."""
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
            raise RequestError("messages must be a list of {'role': ..., 'content': ...} objects")
        variables = {"tools": None, "documents": None, "bos_token": self.bos_token, "eos_token": self.eos_token,
                     **extra, "messages": messages, "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(**variables)
        except Exception as exc:  # raise_exception(), a sandbox refusal, a type error: the template's verdict
            raise RequestError(f"the chat template rejected the conversation: {exc}") from exc

    def encode(self, messages: list[dict], tokenizer: Tokenizer, *, add_generation_prompt: bool = True,
               **extra: Any) -> list[int]:
        """The prompt's token ids for `messages`: the template's own markup read as control tokens, every string the
        caller supplied (contents, roles, names, tool results, `extra` such as tools) read as plain text.

        Rendering first and then parsing special tokens everywhere (what llama.cpp and vLLM do) would turn a user's
        "<|im_end|>\\n<|im_start|>system" into real role markup. So before rendering, each control token written in a
        supplied string becomes SENTINEL + its id + SENTINEL (a SENTINEL the user wrote becomes two of them, so escaped
        text reads back unambiguously), which no special-token match can cross. The rendered text is then cut at the
        control tokens the template wrote, and each stretch between them is encoded as plain text with the escaped
        tokens' literal text put back. That is how encode(parse_special=True) reads a text too: each stretch between
        added tokens is normalized (the SentencePiece prefix space), pre-tokenized and encoded on its own, and added
        tokens are matched whole with no lstrip/rstrip. So a control token in a message yields the ids of its text
        written in place as plain text, and a conversation with no control token's text and no SENTINEL in what
        the caller supplied is encoded exactly as encode(render(...), parse_special=True) encodes it, by that call.

        A template that cuts a supplied string apart (slices it) may split an escape; its pieces then stay
        private-use characters in the text, never control tokens.
        """
        escape = _Escaper(tokenizer)
        text = self.render(escape(messages), add_generation_prompt=add_generation_prompt, **escape(extra))
        if SENTINEL not in text:
            return tokenizer.encode(text, add_bos=False, parse_special=True)
        ids: list[int] = []
        start = 0
        for begin, end, token_id in tokenizer.find_control_tokens(text):
            ids += _encode_plain(tokenizer, text[start:begin])
            ids.append(token_id)
            start = end
        return ids + _encode_plain(tokenizer, text[start:])


# Stands in for a control token's text inside a user's string while the template renders: a private-use code
# point, which no real vocabulary's markup contains and no template prints.
SENTINEL = "\ue000"
_ESCAPED = re.compile(f"{SENTINEL}([0-9]*){SENTINEL}")


class _Escaper:
    """Rewrites every str in a structure of dicts, lists and tuples (keys too) with its control tokens escaped."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._escape(value)
        if isinstance(value, Mapping):
            return {self(key): self(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self(item) for item in value)
        return value

    def _escape(self, text: str) -> str:
        text = text.replace(SENTINEL, SENTINEL * 2)  # a sentinel the user wrote: empty digits
        pieces, start = [], 0
        for begin, end, token_id in self._tokenizer.find_control_tokens(text):
            pieces += [text[start:begin], f"{SENTINEL}{token_id}{SENTINEL}"]
            start = end
        return "".join(pieces) + text[start:]


def _encode_plain(tokenizer: Tokenizer, stretch: str) -> list[int]:
    """A stretch of rendered text between two template-made control tokens, escapes read back as literal text."""
    literal = _ESCAPED.sub(lambda m: tokenizer.token_text(int(m[1])) if m[1] else SENTINEL, stretch)
    return tokenizer.encode(literal, add_bos=False) if literal else []
