"""Presetfiles (parse, escapes, round trip, errors) and the REPL's word wrapping, against Python's own escape decoder
and textwrap."""

import codecs
import re
import io
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deeproots.errors import RequestError
from deeproots.preset import Preset, PresetStore, parse, parse_parameter, unescape
from deeproots.terminal import WordWrapper

PRESETFILE = '''# a comment
FROM smollm2-135m
SYSTEM You answer in one sentence.
PARAMETER temperature 0.3
PARAMETER num_predict 64
PARAMETER stop "\\n\\n"
PARAMETER stop </s>
TEMPLATE """{% for m in messages %}
{{ m.content }}{% endfor %}"""
'''


def test_presetfile_reads_as_ollama_modelfile_does():
    preset = parse(PRESETFILE)
    assert preset == Preset("smollm2-135m", "You answer in one sentence.",
                            {"temperature": 0.3, "max_tokens": 64, "stop": ["\n\n", "</s>"]},
                            "{% for m in messages %}\n{{ m.content }}{% endfor %}")
    assert parse(preset.to_text()) == preset


@pytest.mark.parametrize("text, fragment", [
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM a\nFROM b\n", "line 2: FROM is given twice"),
    ("FROM a\nPARAMETER temperature warm\n", "line 2: temperature takes a number"),
    ("FROM a\nPARAMETER top_q 1\n", "unknown parameter 'top_q'"),
    ("FROM a\nADAPTER x\n", "unknown instruction 'ADAPTER'"),
    ('FROM a\nSYSTEM """open\n', 'line 2: a """ value is not closed'),
    ('FROM a\nSYSTEM "open\n', 'line 2: a "quoted" value is not closed'),
    ("FROM a\nPARAMETER max_tokens 0\n", "max_tokens must be at least 1"),
])
def test_bad_presetfiles_name_the_line(text, fragment):
    with pytest.raises(RequestError, match=re.escape(fragment)):
        parse(text)


@given(st.text(alphabet="ab \n\t\\", max_size=30))
def test_unescape_reads_backslashes_as_python_does(text):
    escaped = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    assert unescape(escaped) == codecs.decode(escaped, "unicode_escape") == text


def test_parameter_aliases_and_types():
    assert parse_parameter("num_ctx", "2048") == ("ctx", 2048)
    assert parse_parameter("Repeat_Penalty", "1.2") == ("repeat_penalty", 1.2)
    with pytest.raises(RequestError, match="top_k takes an integer"):
        parse_parameter("top_k", "4.5")


def test_preset_names_are_one_path_component(tmp_path):
    store = PresetStore(tmp_path)
    for name in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(RequestError, match="not a valid name"):
            store.save(name, Preset("smollm2-135m"))
        assert store.get(name) is None
    store.save("terse", Preset("smollm2-135m", "Be terse."))
    assert store.names() == ["terse"] and store.get("terse").system == "Be terse."


words = st.text(alphabet="abcdefghij", min_size=1, max_size=14)


@given(st.lists(words, min_size=1, max_size=40), st.integers(5, 30), st.lists(st.integers(1, 7), max_size=40))
def test_word_wrap_is_textwraps_whatever_the_chunks(paragraph, width, cuts):
    text = " ".join(paragraph)
    out = io.StringIO()
    wrapper, start = WordWrapper(out, width), 0
    for cut in cuts:  # the text arrives in pieces, as tokens do
        wrapper.write(text[start:start + cut])
        start += cut
    wrapper.write(text[start:])
    wrapper.flush()
    expected = textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)
    assert out.getvalue() == expected


def test_word_wrap_keeps_newlines_and_starts_each_line_afresh():
    out = io.StringIO()
    wrapper = WordWrapper(out, 10)
    wrapper.write("one two three\nfour five six seven")
    wrapper.flush()
    assert out.getvalue() == "one two\nthree\nfour five\nsix seven"
