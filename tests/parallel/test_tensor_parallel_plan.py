"""Tensor parallelism's plan and slices, without processes: which heads and hidden units each rank owns, and the
bytes sliced from the file against the gguf package's own dequantization of the whole tensor."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from deeproots.config import ExpertConfig, ModelConfig
from deeproots.errors import ShardingError
from deeproots.formats.gguf import TensorInfo
from deeproots.model_file import open_model_file
from deeproots.models.weights import GGUFWeights
from deeproots.parallel.plan import plan_shares, split_heads
from deeproots.parallel.weights import ShardedWeights, sliced_entry, take
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


def test_experts_split_by_hidden_units_and_a_cut_inside_a_block_is_refused_naming_the_tensor():
    # gpt-oss-like experts 32 wide in MXFP4 (blocks of 32): rows of gate/up anywhere ("exact"), but "sum" would cut
    # the down projections' input columns at 16, inside their one block
    experts = ExpertConfig(count=8, used_count=2, ffn_dim=32, shared_ffn_dim=None, normalize_weights=False)
    down = "blk.0.ffn_down_exps.weight"
    tensors = {down: TensorInfo(down, (32, 512, 8), GGMLType.MXFP4, 0, None)}  # (experts, d_model, ffn) row-major
    moe = config(architecture="gpt-oss", experts=experts)
    assert [share.expert_ffn for share in plan_shares(moe, tensors, 2)] == [range(0, 16), range(16, 32)]
    with pytest.raises(ShardingError, match=r"'\*.ffn_down_exps.weight'.*32 values.*2 parts at multiples of 32"):
        plan_shares(moe, tensors, 2, "sum")


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
    assert_slice_is_the_gguf_packages(default_file, name, rows, columns)


def assert_slice_is_the_gguf_packages(file, name, rows, columns):
    """Our slice of tensor `name` (rows: of its second-innermost axis, or a vector's elements), dequantized by us,
    against the gguf package's dequantization of the whole tensor, sliced."""
    info = file.tensors[name]
    raw = file.tensor_data(name)
    whole = gguf_dequantize(raw.reshape(-1, raw.size // info.shape[-1]) if len(info.shape) > 1 else raw,
                            GGMLQuantizationType(info.ggml_type)).reshape(tuple(reversed(info.shape)))
    expected = whole if rows is None else np.take(whole, rows, axis=-2 if whole.ndim > 1 else 0)
    if columns is not None:
        expected = expected[..., columns.start:columns.stop]
    part, part_info = take(raw, info, rows, columns), sliced_entry(info, rows, columns)
    assert part.nbytes == part_info.nbytes
    values = dequantize(part, part_info.ggml_type, part_info.shape).reshape(expected.shape)
    np.testing.assert_array_equal(values, expected)


@pytest.fixture(scope="module")
def mxfp4_experts(tiny_checkpoint, tmp_path_factory):
    """The tiny gpt-oss with its experts in MXFP4 (the rest q8_0), opened."""
    from deeproots.convert import convert_folder

    out = tmp_path_factory.mktemp("mxfp4") / "model-mxfp4_moe.gguf"
    convert_folder(tiny_checkpoint("gpt_oss")[0], out, "mxfp4_moe", progress=False)
    return open_model_file(out)


@pytest.mark.slow  # a transformers checkpoint, converted
@pytest.mark.parametrize("name, rows, columns", [
    ("blk.1.ffn_up_exps.weight", np.arange(16, 32), None),  # hidden units 16.. of every expert
    ("blk.1.ffn_down_exps.weight", np.arange(32, 64), None),  # model rows 32.. of every expert ("exact")
    ("blk.1.ffn_down_exps.weight", None, range(0, 32)),  # input columns, one MXFP4 block ("sum")
])
def test_mxfp4_expert_slices_dequantize_as_the_gguf_package_gives_the_whole(mxfp4_experts, name, rows, columns):
    assert GGMLType(mxfp4_experts.tensors[name].ggml_type) == GGMLType.MXFP4
    assert_slice_is_the_gguf_packages(mxfp4_experts, name, rows, columns)


@pytest.mark.slow  # a transformers checkpoint
@pytest.mark.parametrize("reduction", ["exact", "sum"])
def test_gpt_oss_sinks_and_expert_biases_go_with_their_heads_and_hidden_units(tiny_checkpoint, reduction):
    from deeproots.config import config_from_gguf

    file = open_model_file(tiny_checkpoint("gpt_oss")[0])  # float32 experts: "sum" may cut them anywhere
    model = config_from_gguf(file.metadata, len(file.metadata["tokenizer.ggml.tokens"]))
    shares = plan_shares(model, file.tensors, 2, reduction)
    whole = GGUFWeights(file, None)
    E, F = model.experts.count, model.experts.ffn_dim
    for share in shares:
        rank = ShardedWeights(file, None, share, model.head_dim, reduction)
        heads, units = share.heads.q_heads, share.expert_ffn
        np.testing.assert_array_equal(rank.tensor("blk.0.attn_sinks.weight", (len(heads),)),
                                      whole.tensor("blk.0.attn_sinks.weight", (model.n_heads,))[heads.start:heads.stop])
        for part in ("gate", "up"):
            name = f"blk.0.ffn_{part}_exps.bias"
            np.testing.assert_array_equal(rank.tensor(name, (E, len(units))),
                                          whole.tensor(name, (E, F))[:, units.start:units.stop])
        # "sum" adds the down biases to partial sums: on rank 0 alone
        assert rank.has("blk.0.ffn_down_exps.bias") == (reduction == "exact" or share.rank == 0)
        assert rank.has("blk.0.ffn_gate_inp.bias")  # the router, whole on every rank
