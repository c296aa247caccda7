"""Tensor parallelism between two "hosts": rank 0 and rank 1 in network namespaces of their own, joined by a veth
pair, talking over the veth addresses only, in torchrun's form (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, and a
--secret-file). Same checks as on loopback: logits bit-identical to one process, greedy text identical."""

import os
import subprocess
import sys

import numpy as np
import pytest
from netns import ADDRESSES, TwoHosts, available

import deeproots

pytestmark = [pytest.mark.slow, pytest.mark.skipif(available() is not None, reason=str(available()))]

TEXT = "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of"
QUESTION = [{"role": "user", "content": "Write a haiku about roots."}]
RANK_ZERO = """
import sys, numpy as np, deeproots
model = deeproots.load(sys.argv[1], context=512, threads=1, tp=2, secret_file=sys.argv[2])
np.save(sys.argv[3], model.logits(model.tokenize(sys.argv[4])), allow_pickle=False)
open(sys.argv[5], "w").write(model.chat([{"role": "user", "content": "Write a haiku about roots."}], max_tokens=64,
                                        temperature=0))
model.close()
"""


def test_two_hosts_over_a_veth_pair_give_one_process_logits_and_text(smollm2_path, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-at-least-16-bytes\n")
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": ADDRESSES[0], "MASTER_PORT": "29600",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    with TwoHosts(str(os.getpid() % 10000)) as hosts:
        follower = subprocess.Popen(hosts.command(1, [sys.executable, "-m", "deeproots.parallel", "--model",
                                                      str(smollm2_path), "--ctx", "512", "--threads", "1",
                                                      "--secret-file", str(secret)]),
                                    env={**env, "RANK": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        leader = subprocess.run(hosts.command(0, [sys.executable, "-c", RANK_ZERO, str(smollm2_path), str(secret),
                                                  str(tmp_path / "logits.npy"), TEXT, str(tmp_path / "text")]),
                                env={**env, "RANK": "0"}, capture_output=True, text=True, timeout=300)
        follower_errors = follower.communicate(timeout=60)[1].decode()
        assert leader.returncode == 0, leader.stderr + follower_errors
        assert follower.returncode == 0, follower_errors
    single = deeproots.load(smollm2_path, context=512, threads=1)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), single.logits(single.tokenize(TEXT)))
    assert (tmp_path / "text").read_text() == single.chat(QUESTION, max_tokens=64, temperature=0)
