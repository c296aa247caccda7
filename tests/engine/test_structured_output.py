"""Constrained decoding with llguidance on the real model: output always parses and validates; unsupported is refused."""

import json

import jsonschema
import numpy as np
import pytest

from deeproots.cache.kv import KVCache
from deeproots.engine.grammar import GrammarCompiler, LazyConstraint
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


def constrained_text(model, constraint, params, prompt="Describe a person as JSON.", prefix="") -> tuple[str, str]:
    """The constrained answer to `prompt`, after `prefix` (text the answer starts with, fed to the model here and
    to the constraint by the caller)."""
    ids = model.tokenize(model.apply_chat_template([{"role": "user", "content": prompt}]) + prefix, add_bos=False,
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


# --- lazy constraints (tool calls in `auto` mode) ---------------------------------------------------------------

WEATHER_ARGUMENTS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                     "required": ["city"], "additionalProperties": False}


@pytest.fixture(scope="module")
def hermes_grammar(compiler):
    from deeproots.server.tool_formats import FunctionSpec
    from deeproots.server.tool_formats.hermes import HermesFormat

    source = HermesFormat().grammar([FunctionSpec("get_weather", None, WEATHER_ARGUMENTS)], parallel=False,
                                    required=False, marker=lambda text: json.dumps(text))
    return compiler.lark("start: calls\n" + source, "tools")


def lazy(grammar, model, answer_start=lambda text: 0):
    return LazyConstraint(grammar, model.tokenizer, ("<tool_call>",), answer_start)


def feed(constraint, model, text: str) -> None:
    for token_id in model.tokenize(text, add_bos=False):
        constraint.accept(token_id)


def test_lazy_constraint_leaves_prose_free_then_holds_a_started_call_to_the_schema(smollm2, hermes_grammar):
    constraint = lazy(hermes_grammar, smollm2)
    feed(constraint, smollm2, "Let me look that up.")
    assert constraint.allowed().all()  # prose: untouched
    prefix = "Let me look that up. <tool_call>"
    constraint = lazy(hermes_grammar, smollm2)
    feed(constraint, smollm2, prefix)
    assert not constraint.allowed().all()
    # the model continues from the opening under the constraint: whatever it samples is a valid call
    text, finish = constrained_text(smollm2, constraint, SamplingParams(temperature=1.0, seed=3),
                                    prompt="What is the weather in Oslo?", prefix=prefix)
    assert finish == "stop"
    body = json.loads(text.removesuffix("</tool_call>").strip())
    assert body["name"] == "get_weather"
    jsonschema.validate(body["arguments"], WEATHER_ARGUMENTS)


def test_lazy_constraint_steps_aside_when_the_text_at_the_trigger_breaks_the_grammar(smollm2, hermes_grammar):
    # the token that completes the opening already goes on against the grammar: "<tool_call>," ends in ">,"
    constraint = lazy(hermes_grammar, smollm2)
    feed(constraint, smollm2, "a <tool_call")
    constraint.accept(smollm2.tokenize(">,", add_bos=False)[0])
    assert constraint.stepped_aside and constraint.allowed().all()
    feed(constraint, smollm2, " and <tool_call>\n")  # once aside, for good: the answer goes back as content
    assert constraint.allowed().all()


def test_a_call_inside_the_thinking_does_not_engage_the_constraint(smollm2, hermes_grammar):
    from deeproots.server.chat_parse import Thinking

    constraint = lazy(hermes_grammar, smollm2, Thinking().answer_start)
    feed(constraint, smollm2, "<think>maybe <tool_call> here?</think>")
    assert constraint.allowed().all() and not constraint.stepped_aside
    feed(constraint, smollm2, "\n\n<tool_call>")
    assert not constraint.allowed().all()
