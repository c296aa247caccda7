"""`serve --reference --threads --kv-type` reach the served model: its logprobs are the reference backend's."""

import httpx
import numpy as np
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # a server process

PROMPT = "The three primary colors are"


def test_serve_runs_the_backend_its_options_name(smollm2_path, smollm2_reference):
    server = LiveServer(smollm2_path, "--reference", "--threads", "1", "--kv-type", "f32", api_key=None)
    try:
        model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        response = httpx.post(server.url + "/v1/completions", json={
            "model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": 1}, timeout=120)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    served = response.json()["choices"][0]["logprobs"]["token_logprobs"][0]
    logits = smollm2_reference.logits(smollm2_reference.tokenize(PROMPT))[-1].astype(np.float64)
    expected = -float(np.log(np.exp(logits - logits.max()).sum()))  # log-softmax of the greedy (largest) logit
    # the fast path's int8 activations move logits by ~0.2: only the float32 reference agrees this closely
    assert served == pytest.approx(expected, abs=1e-4)
