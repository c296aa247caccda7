"""A real server with prompt lookup (`serve --spec lookup`) through the official openai client: the same greedy
answers as a plain server, and the draft tokens in the usage under OpenAI's names."""

import openai
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # two real server processes

MODEL = "SmolLM2-135M-Instruct.Q4_1"
TEXT = "The old bridge was built in 1887 from grey granite, and it has carried trams, carts and cars ever since."
QUOTE = [{"role": "user", "content": f"{TEXT}\n\nRepeat the sentence above exactly."}]


@pytest.fixture(scope="module")
def clients(smollm2_path):
    servers = [LiveServer(smollm2_path), LiveServer(smollm2_path, "--spec", "lookup", "--draft-max", "6")]
    yield [openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
           for server in servers]
    for server in servers:
        server.stop()


def test_greedy_answer_is_the_plain_servers_and_usage_counts_the_drafts(clients):
    plain, drafted = (client.chat.completions.create(model=MODEL, messages=QUOTE, max_tokens=40, temperature=0)
                      for client in clients)
    assert drafted.choices[0].message.content == plain.choices[0].message.content
    assert drafted.usage.completion_tokens == plain.usage.completion_tokens
    details = drafted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens >= 0
    assert plain.usage.completion_tokens_details is None  # nothing was drafted


def test_streamed_usage_counts_the_drafts(clients):
    stream = clients[1].chat.completions.create(model=MODEL, messages=QUOTE, max_tokens=40, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_completions_usage_counts_the_drafts_whole_and_streamed(clients):
    prompt = f"{TEXT}\n{TEXT}\n"
    plain, drafted = (client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
                      for client in clients)
    assert drafted.choices[0].text == plain.choices[0].text
    assert drafted.usage.completion_tokens_details.accepted_prediction_tokens > 0
    assert plain.usage.completion_tokens_details is None
    chunks = list(clients[1].completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_a_draft_model_of_another_vocabulary_leaves_that_model_served_without_drafts(smollm2_path, gemma3_path,
                                                                                     clients):
    """--draft-model SmolLM2 on a server that also serves Gemma 3 (another vocabulary): Gemma loads and answers as
    on a plain server, with no drafts in its usage; SmolLM2 answers with its (same-vocabulary) draft as plainly."""
    server = LiveServer(smollm2_path, "--spec", "draft", "--draft-model", str(smollm2_path))
    try:
        drafting = openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=120)
        for model in ("gemma3-270m", MODEL):
            plain, drafted = (client.completions.create(model=model, prompt=TEXT, max_tokens=12, temperature=0)
                              for client in (clients[0], drafting))
            assert drafted.choices[0].text == plain.choices[0].text
        gemma = drafting.completions.create(model="gemma3-270m", prompt=f"{TEXT}\n{TEXT}\n", max_tokens=12,
                                            temperature=0)
        assert gemma.usage.completion_tokens_details is None  # no drafts for another vocabulary
    finally:
        server.stop()
