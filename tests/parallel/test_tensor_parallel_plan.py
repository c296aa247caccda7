"""Tensor parallelism's plan and slices, without processes: which heads and hidden units each rank owns, and the
bytes sliced from the file against the gguf package's own dequantization of the whole tensor."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from deeproots.config import ModelConfig
from deeproots.errors import ShardingError
from deeproots.formats.gguf import TensorInfo
from deeproots.model_file import open_model_file
from deeproots.parallel.plan import plan_shares, split_heads
from deeproots.parallel.weights import sliced_entry, take
from deeproots.quant import GGMLType, dequantize


@pytest.mark.parametrize("n_heads, n_kv_heads, tp", [(9, 3, 2), (9, 3, 4), (8, 8, 4), (32, 8, 2), (32, 8, 3),
                                                     (14, 2, 4), (4, 1, 2), (6, 2, 4)])
def test_every_query_head_is_on_one_rank_and_reads_its_own_kv_head(n_heads, n_kv_heads, tp):
    shares = split_heads(n_heads, n_kv_heads, tp)
    assert [h for share in shares for h in share.q_heads] == list(range(n_heads))
    group = n_heads // n_kv_heads
    for share in shares:
        local_group = len(share.q_heads) // len(share.kv_heads)
        assert len(share.q_heads) % len(share.kv_heads) == 0
        # the attention kernels' rule, local query head i reads local KV head i // local_group, lands on the KV head
        # grouped-query attention gives the global query head
        assert [share.kv_heads[i // local_group] for i in range(len(share.q_heads))] == \
            [h // group for h in share.q_heads]
    if n_kv_heads % tp == 0:  # KV heads split, none held twice
        assert sorted(kv for share in shares for kv in share.kv_heads) == list(range(n_kv_heads))


def test_the_default_models_nine_heads_split_by_whole_groups_over_two_ranks_and_evenly_over_four():
    two = split_heads(9, 3, 2)
    assert [(s.q_heads, s.kv_heads) for s in two] == [(range(0, 6), (0, 1)), (range(6, 9), (2,))]
    four = split_heads(9, 3, 4)
    assert [len(s.q_heads) for s in four] == [3, 2, 2, 2]


def test_more_ranks_than_heads_is_refused():
    with pytest.raises(ShardingError, match="every rank needs a head"):
        split_heads(2, 1, 3)


def config(**changes) -> ModelConfig:
    fields = dict(architecture="llama", n_layers=1, d_model=512, n_heads=8, n_kv_heads=2, head_dim=64, ffn_dim=1024,
                  vocab_size=1000, context_length=128, norm_eps=1e-5, rope_theta=1e4, rope_dim=64)
    return ModelConfig(**{**fields, **changes})


def entry(name, ggml_type, rows, columns):
    return TensorInfo(name, (columns, rows), ggml_type, 0, None)


def test_a_sum_split_inside_a_block_is_refused_naming_the_tensor_and_the_cut():
    # 4 heads of 64 on rank 0: attn_output's input columns cut at 256 fit Q6_K's blocks; 3 of 8 heads (tp=3) do not
    tensors = {"blk.0.attn_output.weight": entry("blk.0.attn_output.weight", GGMLType.Q6_K, 512, 512),
               "blk.0.ffn_down.weight": entry("blk.0.ffn_down.weight", GGMLType.Q6_K, 512, 1024)}
    plan_shares(config(), tensors, 2, "sum")
    with pytest.raises(ShardingError, match=r"'blk.0.attn_output.weight' \(Q6_K, blocks of 256\).*column 192"):
        plan_shares(config(), tensors, 3, "sum")
    # "exact" cuts attn_output by rows: any head split fits
    plan_shares(config(), tensors, 3, "exact")
    with pytest.raises(ShardingError, match=r"ffn_down.weight.*1024 values.*5 parts at multiples of 256"):
        plan_shares(config(n_heads=10, n_kv_heads=10), {"blk.0.ffn_down.weight": tensors["blk.0.ffn_down.weight"]}, 5,
                    "sum")


def test_olmoe_is_refused_its_norms_span_all_heads():
    with pytest.raises(ShardingError, match="olmoe"):
        plan_shares(config(architecture="olmoe"), {}, 2)


def test_gpt_oss_is_refused_for_tensor_parallelism_but_not_for_one_rank():
    with pytest.raises(ShardingError, match="gpt-oss"):
        plan_shares(config(architecture="gpt-oss"), {}, 2)
    assert len(plan_shares(config(architecture="gpt-oss"), {}, 1)) == 1


def test_a_column_cut_inside_a_block_is_refused():
    info = entry("w", GGMLType.Q4_1, 4, 64)
    with pytest.raises(ShardingError, match=r"'w' \(Q4_1, blocks of 32\) cannot be split at columns 16..64"):
        sliced_entry(info, None, range(16, 64))


@pytest.fixture(scope="module")
def default_file(smollm2_path):
    return open_model_file(smollm2_path)


@pytest.mark.parametrize("name, rows, columns", [
    ("blk.3.attn_q.weight", np.arange(384, 576), None),  # query heads 6..8
    ("blk.3.attn_k.weight", np.array([*range(64, 128), *range(64, 128)]), None),  # a KV head held twice
    ("blk.3.ffn_down.weight", None, range(768, 1536)),  # input columns, on Q4_1 block boundaries
    ("blk.3.ffn_down.weight", np.arange(288, 576), range(0, 768)),
    ("token_embd.weight", np.arange(24576, 49152), None),  # vocabulary rows of the Q8_0 table
    ("blk.3.attn_norm.weight", np.arange(100, 200), None),  # the elements of an F32 vector
])
def test_sliced_bytes_dequantize_to_the_same_slice_of_the_whole_tensor_as_the_gguf_package_gives(
        default_file, name, rows, columns):
    info = default_file.tensors[name]
    raw = default_file.tensor_data(name)
    whole = gguf_dequantize(raw.reshape(-1, raw.size // info.shape[-1]) if len(info.shape) > 1 else raw,
                            GGMLQuantizationType(info.ggml_type)).reshape(tuple(reversed(info.shape)))
    expected = whole if rows is None else whole[rows]
    if columns is not None:
        expected = expected[..., columns.start:columns.stop]
    part, part_info = take(raw, info, rows, columns), sliced_entry(info, rows, columns)
    assert part.nbytes == part_info.nbytes
    values = dequantize(part, part_info.ggml_type, part_info.shape).reshape(expected.shape)
    np.testing.assert_array_equal(values, expected)
