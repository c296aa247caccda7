"""Mixtures of experts (models/moe.py): routing against transformers', the grouped products against a token-by-token
loop and against the reference backend, and typed errors for expert counts that do not fit.

The logits of every family against transformers run in the shared runner (test_architectures_vs_hf.py).
"""

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_checkpoints import MOE_ARCHITECTURES

import deeproots
from deeproots import kernels
from deeproots.backends.formulas import route
from deeproots.backends.linears import Experts, PackedExperts
from deeproots.config import config_from_gguf
from deeproots.convert import convert_folder
from deeproots.errors import ModelFormatError, UnsupportedModelError

pytestmark = pytest.mark.slow  # transformers checkpoints and llama.cpp

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs, "
        "then count 1, 2, 3, 5, 8 and 13 before the sun sets over the quiet harbour.")


@pytest.fixture(scope="module", params=MOE_ARCHITECTURES)
def checkpoint(request, tiny_checkpoint):
    return tiny_checkpoint(request.param)


def recorded_routes(model) -> list[list[np.ndarray]]:
    """Every layer's chosen experts (N, top_k), appended to the returned lists each time a forward routes."""
    routes = []
    for block in model.net.blocks:
        layer: list[np.ndarray] = []
        original = block.moe.route

        def recording(h, original=original, layer=layer):
            ids, weights = original(h)
            layer.append(ids)
            return ids, weights

        block.moe.route = recording
        routes.append(layer)
    return routes


def test_routing_matches_transformers(checkpoint):
    """The top-k experts of every token in every layer are transformers' (as sets: the order does not matter)."""
    folder, hf_model = checkpoint
    model = deeproots.load(folder, reference=True)
    ids = model.tokenize(TEXT)
    routes = recorded_routes(model)
    model.logits(ids)
    with torch.no_grad():
        router_logits = hf_model(torch.tensor([ids]), output_router_logits=True).router_logits  # (T, E) per layer
    top_k = hf_model.config.num_experts_per_tok
    assert len(router_logits) == len(routes)
    for layer, (ours, theirs) in enumerate(zip(routes, router_logits)):
        expected = torch.topk(theirs.softmax(-1), top_k, dim=-1).indices.numpy()  # (T, top_k)
        np.testing.assert_array_equal(np.sort(ours[0], axis=1), np.sort(expected, axis=1), err_msg=f"layer {layer}")


@pytest.mark.parametrize("route", [route, kernels.route], ids=["formula", "kernel"])
@pytest.mark.parametrize("normalize", [False, True])
def test_route_is_softmax_then_top_k(normalize, route):
    logits = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    ids, weights = route(logits, 3, normalize)
    probabilities = torch.from_numpy(logits).softmax(-1)
    values, indices = torch.topk(probabilities, 3, dim=-1)
    if normalize:
        values = values / values.sum(-1, keepdim=True)
    np.testing.assert_array_equal(ids, indices.numpy())
    np.testing.assert_allclose(weights, values.numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def olmoe_q4_0(tiny_q4_0):
    """A q4_0 file of the tiny OLMoE (every expert's rows fit q4_0's 32-value blocks)."""
    return tiny_q4_0("olmoe")


def hidden_rows(n: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 64)).astype(np.float32)  # (n, d_model)


def token_by_token(moe, h: np.ndarray) -> np.ndarray:
    """The mixture written as its definition: for each token, the weighted sum of its experts' MLPs."""
    ids, weights = moe.route(h)
    out = np.zeros_like(h)
    for t in range(len(h)):
        for expert, weight in zip(ids[t], weights[t]):
            gate_up = moe.ffn_gate_up_exps[expert](h[t:t + 1])
            out[t] += weight * moe.ffn_down_exps[expert](moe.ops.silu_mul(gate_up))[0]
    return out


@pytest.mark.parametrize("reference", [False, True])
def test_grouped_products_match_token_by_token(olmoe_q4_0, reference):
    moe = deeproots.load(olmoe_q4_0, reference=reference).net.blocks[0].moe
    h = hidden_rows(40)
    np.testing.assert_allclose(moe(h), token_by_token(moe, h), rtol=1e-5, atol=1e-6)


def test_grouped_call_is_the_per_expert_loop_bit_for_bit(olmoe_q4_0):
    """The packed experts' one-call product (kernels.experts_linear) against the loop of one product per expert."""
    experts = deeproots.load(olmoe_q4_0).net.blocks[0].moe.ffn_gate_up_exps
    assert isinstance(experts, PackedExperts)
    chosen, starts = np.array([0, 3, 4, 7]), np.array([0, 5, 6, 17, 40])
    h = hidden_rows(40)
    np.testing.assert_array_equal(experts.grouped(h, chosen, starts), Experts.grouped(experts, h, chosen, starts))


def test_fast_path_row_does_not_depend_on_the_batch(olmoe_q4_0):
    """A token's output is the same bits alone as among others that share its experts."""
    moe = deeproots.load(olmoe_q4_0).net.blocks[0].moe
    h = hidden_rows(40)
    together = moe(h)
    for t in range(len(h)):
        np.testing.assert_array_equal(moe(h[t:t + 1])[0], together[t])


def test_fast_path_sequences_packed_together_give_each_one_s_own_bits(olmoe_q4_0):
    """Prefill of three sequences in one forward, then a decode step of all three, against each one alone: the
    experts see different companions for every token, and no bit changes."""
    model = deeproots.load(olmoe_q4_0)
    ids = model.tokenize(TEXT)
    prompts = [ids[:9], ids[5:35], ids[20:37]]
    caches = [model.new_cache(64) for _ in prompts]
    packed = model.net.forward_batch(np.array(sum(prompts, [])), caches, [len(p) for p in prompts])
    step = model.net.forward_batch(np.array([5, 6, 7]), caches, [1, 1, 1])
    for prompt, token, prefill_row, step_row in zip(prompts, (5, 6, 7), packed, step):
        own = model.new_cache(64)
        np.testing.assert_array_equal(model.net.forward(np.array(prompt), own)[0], prefill_row)
        np.testing.assert_array_equal(model.net.forward(np.array([token]), own)[0], step_row)


def test_fast_path_matches_the_reference_backend(olmoe_q4_0):
    """The packed per-expert slices compute what the dequantized float32 experts do, on the same routing (the
    router itself may pick another expert for a token near a tie once activations are rounded to q8)."""
    fast = deeproots.load(olmoe_q4_0).net.blocks[0].moe
    reference = deeproots.load(olmoe_q4_0, reference=True).net.blocks[0].moe
    h = hidden_rows(40)
    ids, weights = reference.route(h)
    expected = reference.experts_output(h, ids, weights)  # (40, d_model)
    ours = fast.experts_output(h, ids, weights)
    # Two chained products (gate/up, then down), each rounding its input rows to q8_0 (up to 1/254 of a block's
    # largest value per element), the first through SiLU: measured 1.1% of the output's largest value.
    assert np.abs(ours - expected).max() < 0.03 * np.abs(expected).max()


def test_converted_experts_are_llama_cpp_s_3d_tensors(tiny_checkpoint, tmp_path):
    """Read by the official gguf reader: (row length, rows, experts) in GGUF order, routers kept in F32."""
    import gguf  # the test extra's independent reader
    out = tmp_path / "model-q8_0.gguf"
    convert_folder(tiny_checkpoint("qwen2_moe")[0], out, "q8_0", progress=False)
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(out).tensors}
    expected = {"blk.0.ffn_gate_exps.weight": ([64, 32, 8], "Q8_0"), "blk.0.ffn_up_exps.weight": ([64, 32, 8], "Q8_0"),
                "blk.0.ffn_down_exps.weight": ([32, 64, 8], "Q8_0"), "blk.0.ffn_gate_inp.weight": ([64, 8], "F32"),
                "blk.0.ffn_gate_shexp.weight": ([64, 96], "Q8_0"), "blk.0.ffn_down_shexp.weight": ([96, 64], "Q8_0"),
                "blk.0.ffn_gate_inp_shexp.weight": ([64, 1], "F32")}
    for name, (shape, type_name) in expected.items():
        assert (list(tensors[name].shape), tensors[name].tensor_type.name) == (shape, type_name), name
    # Expert 3's gate matrix is the HF checkpoint's experts.3.gate_proj, dequantized by gguf's own code.
    hf_model = tiny_checkpoint("qwen2_moe")[1]
    gate = gguf.dequantize(tensors["blk.0.ffn_gate_exps.weight"].data, gguf.GGMLQuantizationType.Q8_0)[3]
    reference = hf_model.model.layers[0].mlp.experts.gate_up_proj[3, :32].detach().numpy()  # transformers 5 fuses
    np.testing.assert_allclose(gate, reference, atol=np.abs(reference).max() / 100)


def copy_with_config(tmp_path, tiny_checkpoint, model_type, **changes):
    copy = tmp_path / model_type
    shutil.copytree(tiny_checkpoint(model_type)[0], copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return copy


def test_more_experts_per_token_than_experts_names_the_key(tmp_path, tiny_checkpoint):
    folder = copy_with_config(tmp_path, tiny_checkpoint, "qwen3_moe", num_experts_per_tok=9)
    with pytest.raises(ModelFormatError, match="qwen3moe.expert_used_count.*8 experts") as error:
        deeproots.load(folder)
    assert error.value.field == "qwen3moe.expert_used_count"


def test_expert_count_that_does_not_match_the_tensors_names_the_key(tmp_path, tiny_checkpoint):
    folder = copy_with_config(tmp_path, tiny_checkpoint, "olmoe", num_experts=6)
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate_inp.weight holds 8 experts.*olmoe.expert_count"):
        deeproots.load(folder)


def test_dense_layers_between_sparse_ones_are_refused(tmp_path, tiny_checkpoint):
    folder = copy_with_config(tmp_path, tiny_checkpoint, "qwen2_moe", mlp_only_layers=[1])
    with pytest.raises(UnsupportedModelError, match="mlp_only_layers"):
        deeproots.load(folder)


METADATA = {"general.architecture": "olmoe", "olmoe.embedding_length": 64, "olmoe.attention.head_count": 4,
            "olmoe.block_count": 2, "olmoe.feed_forward_length": 128, "olmoe.context_length": 256,
            "olmoe.attention.layer_norm_rms_epsilon": 1e-5}


def test_expert_keys_are_read_with_the_family_defaults():
    experts = config_from_gguf({**METADATA, "olmoe.expert_count": 64, "olmoe.expert_used_count": 8}, 100).experts
    assert (experts.count, experts.used_count, experts.ffn_dim, experts.shared_ffn_dim) == (64, 8, 128, None)
    assert experts.normalize_weights is False  # OLMoE's default, as llama.cpp's
    assert config_from_gguf(METADATA, 100).experts is None


@pytest.mark.parametrize("changes, key", [({"olmoe.expert_used_count": None}, "olmoe.expert_used_count"),
                                          ({"olmoe.expert_count": 0}, "olmoe.expert_count"),
                                          ({"olmoe.expert_weights_norm": 1}, "olmoe.expert_weights_norm")])
def test_bad_expert_keys_name_the_key(changes, key):
    metadata = {**METADATA, "olmoe.expert_count": 8, "olmoe.expert_used_count": 2, **changes}
    metadata = {name: value for name, value in metadata.items() if value is not None}
    with pytest.raises(ModelFormatError, match=key) as error:
        config_from_gguf(metadata, 100)
    assert error.value.field == key
