"""Pipeline parallelism: stages of layers in processes of their own (loopback), against one process. Every layer is
computed as one process computes it, so the logits are bit-identical and greedy text is identical (the tiny
checkpoints in two stages: test_tensor_parallel_ranks.py)."""

import numpy as np
import pytest

import deeproots
from deeproots.errors import RequestError
from deeproots.parallel.pipeline import split_layers

TEXT = "The history of the Roman Empire spans many centuries, from the founding of the city to the fall of"
QUESTION = [{"role": "user", "content": "Write a haiku about roots."}]


def test_layers_are_cut_evenly_or_where_asked():
    assert split_layers(30, 4) == [range(0, 8), range(8, 16), range(16, 23), range(23, 30)]
    assert split_layers(30, 3, [10, 22]) == [range(0, 10), range(10, 22), range(22, 30)]
    for bad in ([10], [22, 10], [0, 22], [10, 30]):
        with pytest.raises(RequestError, match="--pp-split"):
            split_layers(30, 3, bad)


@pytest.mark.slow  # starts rank processes
@pytest.mark.parametrize("stages, split, tp", [(2, None, 1), (3, [10, 22], 1), (2, [14], 2)])
def test_stages_give_one_process_logits_and_greedy_text(smollm2_path, stages, split, tp):
    """2 and 3 stages, and 2 stages of 2 tensor-parallel ranks each (4 ranks)."""
    single = deeproots.load(smollm2_path, context=512, threads=1)
    model = deeproots.load(smollm2_path, context=512, threads=1, pp=stages, pp_split=split, tp=tp)
    try:
        ids = single.tokenize(TEXT)
        np.testing.assert_array_equal(model.logits(ids), single.logits(ids))
        text = single.chat(QUESTION, max_tokens=64, temperature=0)
        assert len(single.tokenize(text)) >= 60
        assert model.chat(QUESTION, max_tokens=64, temperature=0) == text
    finally:
        model.close()


def test_without_a_split_the_layers_follow_each_hosts_available_memory():
    assert split_layers(30, 2, memory=[8000.0, 8000.0]) == [range(0, 15), range(15, 30)]
    assert split_layers(30, 2, memory=[24000.0, 8000.0]) == [range(0, 23), range(23, 30)]  # 22.5 : 7.5
    assert split_layers(32, 3, memory=[1000.0, 1.0, 1.0]) == [range(0, 30), range(30, 31), range(31, 32)]
    assert split_layers(30, 3, memory=[16000.0, 8000.0, 8000.0]) == [range(0, 15), range(15, 23), range(23, 30)]
