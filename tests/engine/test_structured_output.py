"""Constrained decoding with llguidance on the real model: output always parses and validates; unsupported is refused."""

import json

import jsonschema
import numpy as np
import pytest

from deeproots.cache.kv import KVCache
from deeproots.engine.grammar import GrammarCompiler
from deeproots.errors import RequestError
from deeproots.generate import SequenceDecoder
from deeproots.sampling import SamplingParams

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                                    "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}


@pytest.fixture(scope="module")
def compiler(smollm2):
    return GrammarCompiler(smollm2.tokenizer, smollm2.config.vocab_size)


def constrained_text(model, constraint, params, prompt="Describe a person as JSON.") -> tuple[str, str]:
    ids = model.tokenize(model.apply_chat_template([{"role": "user", "content": prompt}]), add_bos=False,
                         parse_special=True)
    c = model.config
    cache = KVCache(c.n_layers, c.n_kv_heads, c.head_dim, len(ids) + 120)
    decoder = SequenceDecoder(model.tokenizer, ids, params, max_tokens=120, constraint=constraint)
    logits = model.net.forward(np.array(ids, dtype=np.int64), cache)[-1]
    pieces = []
    while True:
        step = decoder.step(logits, cache.room())
        pieces.append(step.text)
        if step.finish_reason:
            return "".join(pieces), step.finish_reason
        logits = model.net.forward(np.array([step.token_id], dtype=np.int64), cache)[-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_output_always_validates_against_the_schema(smollm2, compiler, seed):
    grammar = compiler.json_schema(PERSON)
    params = SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
    text, finish = constrained_text(smollm2, grammar.constraint(), params)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode_gives_an_object(smollm2, compiler):
    text, finish = constrained_text(smollm2, compiler.json_schema(None).constraint(), SamplingParams(temperature=0.0),
                                    prompt="What is the capital of France? Answer in JSON.")
    assert finish == "stop" and isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema", [{"type": "string", "format": "no-such-format"}, {"type": "strng"},
                                    {"$ref": "https://example.com/remote.json"}])
def test_unsupported_or_invalid_schemas_are_refused(compiler, schema):
    with pytest.raises(RequestError, match="schema"):
        compiler.json_schema(schema)


@pytest.mark.parametrize("schema", [{"$ref": "#"},
                                    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                                     "$ref": "#/$defs/a"}])
def test_schemas_that_admit_no_value_are_refused_when_compiled(compiler, schema):
    # llguidance validates these; they fail only at the first token mask, which must not happen mid-stream
    with pytest.raises(RequestError, match="admits no value") as refused:
        compiler.json_schema(schema)
    assert "Parser" not in str(refused.value) and "\n" not in str(refused.value)  # none of llguidance's state dump
