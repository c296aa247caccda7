"""Chat templates for model families whose files carry none, picked as llama.cpp does: by the file's
architecture, else by a special token only that family's chat format uses. They are Jinja sources,
rendered by ChatTemplate exactly like a template read from a file.
"""

from __future__ import annotations

from typing import Any, Mapping

# google/gemma-3-*-it's template, verbatim: the system message opens the first user turn, "model" answers.
GEMMA = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# ChatML as llama.cpp's built-in "chatml" writes it (Qwen2, Qwen3): no default system message.
CHATML = r"""{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

# Renders what meta-llama/Meta-Llama-3-8B-Instruct's template renders.
LLAMA3 = r"""{%- for message in messages -%}
    {{- bos_token if loop.first else '' -}}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"""

# mistralai/Mistral-7B-Instruct-v0.3's template without tools: the system message opens the last user turn.
MISTRAL = r"""{%- if messages[0]['role'] == 'system' -%}
    {%- set system_message = messages[0]['content'] -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{{- bos_token -}}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception('After the optional system message, roles must alternate user/assistant/...') -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {%- if loop.last and system_message is defined -%}
            {{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' -}}
        {%- else -%}
            {{- '[INST] ' + message['content'] + '[/INST]' -}}
        {%- endif -%}
    {%- elif message['role'] == 'assistant' -%}
        {{- ' ' + message['content'] | trim + eos_token -}}
    {%- else -%}
        {{- raise_exception('Only user and assistant roles are supported, after an optional system message') -}}
    {%- endif -%}
{%- endfor -%}
"""

BY_ARCHITECTURE = {**dict.fromkeys(("gemma", "gemma2", "gemma3", "gemma3n"), GEMMA),
                   **dict.fromkeys(("qwen2", "qwen2moe", "qwen3", "qwen3moe"), CHATML)}
# A token only one family's chat format uses, tried in this order.
BY_TOKEN = (("<start_of_turn>", GEMMA), ("<|im_start|>", CHATML), ("<|start_header_id|>", LLAMA3),
            ("[INST]", MISTRAL))


def builtin_template(metadata: Mapping[str, Any]) -> str | None:
    """The built-in template for the file's model family, or None when the family is not recognised."""
    architecture = metadata.get("general.architecture")
    if isinstance(architecture, str) and architecture in BY_ARCHITECTURE:
        return BY_ARCHITECTURE[architecture]
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocabulary = set(tokens) if isinstance(tokens, list) else set()
    return next((template for token, template in BY_TOKEN if token in vocabulary), None)
