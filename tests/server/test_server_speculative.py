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
