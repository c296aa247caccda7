"""Built-in chat templates for files that carry none: which family is picked, and what each renders, held
against the prompt formats the model makers document (written out by hand) and HF's own rendering."""

from __future__ import annotations

import pytest

from deeproots.errors import RequestError
from deeproots.tokenizer import ChatTemplate, Tokenizer
from deeproots.tokenizer.builtin_templates import CHATML, GEMMA, LLAMA3, MISTRAL, builtin_template

pytest.importorskip("transformers")
from test_chat_template import CONVERSATIONS, hf_render  # noqa: E402

pytestmark = pytest.mark.slow  # transformers' templates

TOKENS = {"bos": {GEMMA: "<bos>", CHATML: "", LLAMA3: "<|begin_of_text|>", MISTRAL: "<s>"},
          "eos": {GEMMA: "<eos>", CHATML: "<|im_end|>", LLAMA3: "<|eot_id|>", MISTRAL: "</s>"}}
MULTI_TURN = CONVERSATIONS["multi_turn"]  # system, user, assistant, user

# The documented prompt for MULTI_TURN with the generation prompt, per family.
EXPECTED = {
    GEMMA: "<bos><start_of_turn>user\nBe brief.\n\nName a color.<end_of_turn>\n"
           "<start_of_turn>model\nBlue.<end_of_turn>\n"
           "<start_of_turn>user\nAnother, with ünïcödé and 😀?<end_of_turn>\n<start_of_turn>model\n",
    CHATML: "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a color.<|im_end|>\n"
            "<|im_start|>assistant\nBlue.<|im_end|>\n<|im_start|>user\nAnother, with ünïcödé and 😀?<|im_end|>\n"
            "<|im_start|>assistant\n",
    LLAMA3: "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAnother, with ünïcödé and 😀?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
    MISTRAL: "<s>[INST] Name a color.[/INST] Blue.</s>[INST] Be brief.\n\nAnother, with ünïcödé and 😀?[/INST]",
}
FAMILIES = {"gemma": GEMMA, "chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL}


def template(source: str) -> ChatTemplate:
    return ChatTemplate(source, bos_token=TOKENS["bos"][source], eos_token=TOKENS["eos"][source])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_renders_the_documented_prompt(family):
    source = FAMILIES[family]
    assert template(source).render(MULTI_TURN, add_generation_prompt=True) == EXPECTED[source]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_renders_as_hf_does(family, name, add_generation_prompt):
    source = FAMILIES[family]
    expected = hf_render(source, CONVERSATIONS[name], bos_token=TOKENS["bos"][source],
                         eos_token=TOKENS["eos"][source], add_generation_prompt=add_generation_prompt)
    assert template(source).render(CONVERSATIONS[name], add_generation_prompt=add_generation_prompt) == expected


def test_gemma_takes_content_parts_and_rejects_non_alternating_roles():
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is it? "}]}]
    assert template(GEMMA).render(parts) == \
        "<bos><start_of_turn>user\n<start_of_image>What is it?<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(RequestError, match="must alternate"):
        template(GEMMA).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize(("metadata", "family"), [
    ({"general.architecture": "gemma3"}, "gemma"),
    ({"general.architecture": "gemma2", "tokenizer.ggml.tokens": ["<|im_start|>"]}, "gemma"),
    ({"general.architecture": "qwen2"}, "chatml"),
    ({"general.architecture": "qwen3"}, "chatml"),
    ({"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "<|im_start|>", "<|im_end|>"]}, "chatml"),
    ({"general.architecture": "llama", "tokenizer.ggml.tokens": ["<|start_header_id|>", "<|eot_id|>"]}, "llama3"),
    ({"general.architecture": "llama", "tokenizer.ggml.tokens": ["<s>", "[INST]", "[/INST]"]}, "mistral"),
    ({"general.architecture": "phi3", "tokenizer.ggml.tokens": ["<start_of_turn>"]}, "gemma"),
])
def test_family_from_architecture_then_vocabulary(metadata, family):
    assert builtin_template(metadata) == FAMILIES[family]


@pytest.mark.parametrize("metadata", [
    {}, {"general.architecture": "llama", "tokenizer.ggml.tokens": ["<s>", "</s>", "hello"]},
    {"general.architecture": ["not", "a", "name"], "tokenizer.ggml.tokens": "not a list"},
])
def test_unknown_family_has_no_template(metadata):
    assert builtin_template(metadata) is None


def test_file_template_wins_over_the_built_in_one(smollm2_metadata):
    tokenizer = Tokenizer.from_gguf_metadata(smollm2_metadata)
    assert ChatTemplate.from_gguf_metadata(smollm2_metadata, tokenizer).source == \
        smollm2_metadata["tokenizer.chat_template"]
    trimmed = {key: value for key, value in smollm2_metadata.items() if key != "tokenizer.chat_template"}
    fallback = ChatTemplate.from_gguf_metadata(trimmed, tokenizer)  # SmolLM2's vocabulary has <|im_start|>
    assert fallback.source == CHATML and fallback.eos_token == "<|im_end|>"
