"""Structured output: JSON schemas compiled by llguidance into per-step token masks over the model's vocabulary.

We never compile schemas ourselves: llguidance (the grammar engine behind llama.cpp's and vLLM's constrained
decoding) does, and it rejects keywords it cannot enforce, which we report as a RequestError (a 400) rather
than generate unconstrained text.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import llguidance
import numpy as np

from ..errors import RequestError
from ..tokenizer import Tokenizer

NO_VALUE = "response_format: the JSON schema admits no value (e.g. a $ref that only refers to itself or loops)"


class ConstraintError(RequestError):
    """The output grammar cannot be continued: the request's schema is at fault, not the engine."""


# Compact JSON: with flexible whitespace a small model can emit spaces forever and never close the object.
JSON_OPTIONS = {"whitespace_flexible": False, "lenient": False}


class _VocabularyView:
    """What llguidance's TokenizerWrapper reads from a tokenizer: token bytes, special ids, an encoder."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        stop_ids = sorted(tokenizer.stop_ids)
        self.eos_token_id = stop_ids[0] if stop_ids else tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        # Control tokens are marked with a leading 0xFF byte, as llguidance's llama.cpp bridge does.
        self.tokens = [b"\xff" + tokenizer.token_bytes(i) if tokenizer.is_control(i) else tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)] + [b""] * (vocab_size - tokenizer.vocab_size)
        self.special_token_ids = [i for i in range(tokenizer.vocab_size) if tokenizer.is_control(i)]
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_bos=False)


class GrammarCompiler:
    """Built once per model (walking the vocabulary takes about a second); compiles response formats."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int):
        view = _VocabularyView(tokenizer, vocab_size)
        self.vocab_size = vocab_size
        self.lltokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(view), n_vocab=vocab_size,
                                                  eos_token=sorted(tokenizer.stop_ids) or None)

    def json_schema(self, schema: dict[str, Any] | None) -> JsonGrammar:
        """A grammar for JSON matching `schema` (None: any JSON object). RequestError when unsupported."""
        if schema is not None and not isinstance(schema, dict):
            raise RequestError("response_format.json_schema.schema must be a JSON object")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(schema if schema is not None else {"type": "object"}), overrides=JSON_OPTIONS)
        except ValueError as error:
            raise RequestError(f"response_format: invalid JSON schema: {error}") from error
        return self._validated(grammar, "response_format: unsupported or invalid JSON schema")

    def lark(self, source: str, what: str) -> JsonGrammar:
        """A grammar in llguidance's Lark syntax (e.g. tool calls with inline %json schemas); RequestError, starting
        with `what`, when llguidance refuses it."""
        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(source)
        except ValueError as error:
            raise RequestError(f"{what}: {error}") from error
        return self._validated(grammar, what)

    def _validated(self, grammar: str, what: str) -> JsonGrammar:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise RequestError(f"{what}: {messages[0]}")
        compiled = JsonGrammar(self, grammar)
        compiled.check_first_step()
        return compiled


class JsonGrammar:
    """A validated grammar (a JSON schema's or a Lark one); each sequence gets its own constraint (matcher state)."""

    def __init__(self, compiler: GrammarCompiler, grammar: str):
        self.compiler = compiler
        self.grammar = grammar

    def constraint(self) -> GrammarConstraint:
        return GrammarConstraint(llguidance.LLMatcher(self.compiler.lltokenizer, self.grammar, log_level=0),
                                 self.compiler.vocab_size)

    def check_first_step(self) -> None:
        """Refuse, before any generation starts, a grammar whose first token mask already fails (a schema that only
        refers to itself, {"$ref": "#"} or a $ref loop, validates yet admits no JSON text at all)."""
        try:
            admits_a_token = self.constraint().allowed().any()
        except ConstraintError as error:
            raise RequestError(NO_VALUE) from error
        if not admits_a_token:
            raise RequestError(NO_VALUE)


class GrammarConstraint:
    """The TokenConstraint of generate.SequenceDecoder, backed by an llguidance matcher."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self._check()

    def allowed(self) -> np.ndarray:
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)  # one bit per token, little-endian
        mask = np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool)  # (vocab,)
        self._check()
        return mask

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)
        self._check()

    def _check(self) -> None:
        if self.matcher.is_error():  # llguidance's first line names the failure; the rest is its parser state
            raise ConstraintError(f"the output constraint failed: {self.matcher.get_error().splitlines()[0]}")


class LazyConstraint:
    """A grammar that applies only from a trigger on (llama.cpp's lazy grammars): until one of `triggers` appears in
    the output, every token is allowed; then the grammar is fed the output from the trigger and constrains the rest.

    `answer_start(text)` tells where the answer starts, or None while the model is still thinking: triggers are only
    looked for in the answer (a call inside the thinking is not a call). If the model's own text at the trigger
    already breaks the grammar, the constraint steps aside (the text then goes back to the client as content, never
    an error)."""

    def __init__(self, grammar: JsonGrammar, tokenizer: Tokenizer, triggers: tuple[str, ...],
                 answer_start: Callable[[str], int | None]):
        self.grammar, self.tokenizer = grammar, tokenizer
        self.triggers, self.answer_start = triggers, answer_start
        self.output = bytearray()
        self.inner: GrammarConstraint | None = None
        self.stepped_aside = False
        self._everything = np.ones(grammar.compiler.vocab_size, dtype=bool)  # (vocab,)

    def allowed(self) -> np.ndarray:
        return self.inner.allowed() if self.inner else self._everything

    def accept(self, token_id: int) -> None:
        if self.inner:
            self.inner.accept(token_id)
            return
        if self.stepped_aside:
            return
        self.output += self.tokenizer.token_bytes(token_id)
        text = self.output.decode("utf-8", errors="ignore")
        start = self._trigger_at(text)
        if start is not None:
            self._engage(text[start:])

    def _trigger_at(self, text: str) -> int | None:
        answer = self.answer_start(text)
        if answer is None:
            return None
        hits = [i for i in (text.find(trigger, answer) for trigger in self.triggers) if i >= 0]
        return min(hits) if hits else None

    def _engage(self, text: str) -> None:
        inner = self.grammar.constraint()
        try:
            for token_id in self.tokenizer.encode(text, add_bos=False, parse_special=True):
                inner.accept(token_id)
        except ConstraintError:
            self.stepped_aside = True
            return
        self.inner = inner
