"""Structured output: JSON schemas compiled by llguidance into per-step token masks over the model's vocabulary.

We never compile schemas ourselves: llguidance (the grammar engine behind llama.cpp's and vLLM's constrained
decoding) does, and it rejects keywords it cannot enforce, which we report as a RequestError (a 400) rather
than generate unconstrained text.
"""

from __future__ import annotations

import json
from typing import Any

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
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.lltokenizer)
        if is_error:
            raise RequestError(f"response_format: unsupported or invalid JSON schema: {messages[0]}")
        compiled = JsonGrammar(self, grammar)
        compiled.check_first_step()
        return compiled


class JsonGrammar:
    """A validated grammar; each sequence gets its own constraint (matcher state) from it."""

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
