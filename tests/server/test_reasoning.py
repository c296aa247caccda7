"""Reasoning through a real server: a tiny random Qwen 2 checkpoint with DeepSeek-R1's published template, whose
generation prompt opens <think>. What the model writes before </think> is reasoning_content, never content, whole
and streamed as its own deltas."""

import shutil

import openai
import pytest
from live_server import LiveServer
from tool_templates import DEEPSEEK_R1, template_source

pytestmark = pytest.mark.slow  # transformers makes the checkpoint; a server process

ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def client(tiny_checkpoint, tmp_path_factory):
    source, _ = tiny_checkpoint("qwen2")
    folder = tmp_path_factory.mktemp("r1")
    shutil.copytree(source, folder, dirs_exist_ok=True)
    (folder / "chat_template.jinja").write_text(template_source(DEEPSEEK_R1))
    server = LiveServer(folder)
    yield openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
    server.stop()


def test_thinking_is_reasoning_content_whole_and_streamed(client):
    model = client.models.list().data[0].id
    body = dict(model=model, messages=ASK, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**body).choices[0]
    # random weights never close the thinking the prompt opened: all of it is reasoning, cut by the limit
    assert whole.finish_reason == "length" and whole.message.content == ""
    reasoning = whole.message.model_extra["reasoning_content"]
    assert reasoning and whole.message.model_extra["reasoning"] == reasoning
    chunks = list(client.chat.completions.create(**body, stream=True))
    streamed = "".join((chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                       for chunk in chunks if chunk.choices)
    assert streamed == reasoning
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == ""
