"""Chat templates rendered by us against HF transformers' apply_chat_template on the same template."""

from __future__ import annotations

import pytest

from deeproots.errors import DeeprootsError, ModelFormatError, RequestError
from deeproots.tokenizer import ChatTemplate, Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.slow  # transformers' templates

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "system_and_user": [{"role": "system", "content": "Answer in French."},
                        {"role": "user", "content": "Hello!"}],
    "multi_turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Name a color."},
                   {"role": "assistant", "content": "Blue."},
                   {"role": "user", "content": "Another, with ünïcödé and 😀?"}],
    "assistant_last": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
}

# A Llama-3.1-style template exercising what HF templates lean on: bos_token, strftime_now, tojson,
# namespace, loop controls, raise_exception, a {% generation %} block and an extra variable.
RICH_TEMPLATE = """{{- bos_token }}
{%- set ns = namespace(system="") %}
{%- for message in messages %}
  {%- if message.role == "system" %}{% set ns.system = message.content %}{% continue %}{% endif %}
  {%- if message.role not in ["user", "assistant"] %}{{ raise_exception("Unknown role: " + message.role) }}{% endif %}
{%- endfor %}
<|start_header_id|>system<|end_header_id|>
Cutting Knowledge Date: {{ strftime_now("%Y") | length }} digits
{%- if tools %}
Tools: {{ tools | tojson }}
{%- endif %}
{{ ns.system }}{{ custom_note | default("") }}<|eot_id|>
{%- for message in messages if message.role != "system" %}
<|start_header_id|>{{ message.role }}<|end_header_id|>
{% if message.role == "assistant" %}{% generation %}{{ message.content | trim }}{% endgeneration %}
{% else %}{{ message.content | trim }}{% endif %}
{{ eos_token if loop.last and message.role == "assistant" else "<|eot_id|>" }}
{%- if loop.index > 10 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>
{% endif %}"""

TOOLS = [{"type": "function",
          "function": {"name": "weather", "description": "Météo — today",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def hf_render(source: str, messages: list[dict], *, bos_token: str, eos_token: str, **kwargs) -> str:
    """HF's own apply_chat_template, on a tokenizer that carries nothing but the template and the two tokens."""
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()),
                                              bos_token=bos_token, eos_token=eos_token, chat_template=source)
    return hf.apply_chat_template(messages, tokenize=False, **kwargs)


@pytest.fixture(scope="module")
def smol_template(smollm2_metadata) -> ChatTemplate:
    template = ChatTemplate.from_gguf_metadata(smollm2_metadata, Tokenizer.from_gguf_metadata(smollm2_metadata))
    assert template is not None
    return template


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_smollm2_template_matches_hf(smollm2_metadata, smol_template, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    expected = hf_render(smollm2_metadata["tokenizer.chat_template"], messages, bos_token="<|im_start|>",
                         eos_token="<|im_end|>", add_generation_prompt=add_generation_prompt)
    assert smol_template.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_smollm2_template_takes_its_tokens_from_the_vocabulary(smol_template):
    assert (smol_template.bos_token, smol_template.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smol_template.render(CONVERSATIONS["user_only"]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_rich_template_matches_hf(name, add_generation_prompt):
    template = ChatTemplate(RICH_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    messages = CONVERSATIONS[name]
    ours = template.render(messages, add_generation_prompt=add_generation_prompt, tools=TOOLS, custom_note=" [n]")
    expected = hf_render(RICH_TEMPLATE, messages, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                         add_generation_prompt=add_generation_prompt, tools=TOOLS, custom_note=" [n]")
    assert ours == expected
    assert "Météo" in ours  # tojson keeps non-ASCII text, as HF's does


def test_raise_exception_becomes_a_request_error():
    template = ChatTemplate(RICH_TEMPLATE)
    with pytest.raises(RequestError, match="Unknown role: robot"):
        template.render([{"role": "robot", "content": "beep"}])


def test_syntax_error_is_a_model_format_error():
    with pytest.raises(ModelFormatError, match="tokenizer.chat_template") as error:
        ChatTemplate("{% for m in messages %}{{ m.content }")
    assert error.value.field == "tokenizer.chat_template"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",                         # reaching Python internals
    "{{ messages.append({'role': 'x'}) }}",               # mutating the caller's data
    "{{ cycler.__init__.__globals__.os }}",             # a function's module globals
])
def test_the_sandbox_refuses_escapes(source):
    with pytest.raises(RequestError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}])


def test_failures_inside_the_template_are_typed():
    template = ChatTemplate("{{ messages[0]['content'] + 1 }}")
    with pytest.raises(DeeprootsError):
        template.render([{"role": "user", "content": "text"}])
    with pytest.raises(RequestError):
        ChatTemplate("{{ messages }}").render("not a list")  # type: ignore[arg-type]


def test_file_without_template(smollm2_metadata):
    # No template and no family to take a built-in one from (test_builtin_templates.py covers those).
    bare = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.merges": []}
    assert ChatTemplate.from_gguf_metadata(bare, Tokenizer.from_gguf_metadata(bare)) is None
    with pytest.raises(ModelFormatError):
        ChatTemplate.from_gguf_metadata({**smollm2_metadata, "tokenizer.chat_template": ["x"]},
                                        Tokenizer.from_gguf_metadata(smollm2_metadata))
