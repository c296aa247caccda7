"""gpt-oss (models/gpt_oss.py) piece by piece against transformers' GptOss code: the router's experts per token in
order and their weights, the clamped SwiGLU on HF's interleaved gate/up, YaRN's frequencies; and typed errors for
what a checkpoint or file can get wrong. The logits of the whole model run in the shared runner
(test_architectures_vs_hf.py, and test_moe.py's routing sets).
"""

import json
import shutil

import numpy as np
import pytest
import torch

import deeproots
from deeproots.backends.formulas import clamped_swiglu, yarn_frequencies
from deeproots.config import YarnScaling
from deeproots.errors import ModelFormatError, UnsupportedModelError
from deeproots.models.gpt_oss import SWIGLU_ALPHA, SWIGLU_LIMIT, route_top_k_softmax

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs, "
        "then count 1, 2, 3, 5, 8 and 13 before the sun sets over the quiet harbour.")


def test_route_is_top_k_then_softmax():
    logits = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32) * 3
    ids, weights = route_top_k_softmax(logits, 3)
    values, indices = torch.topk(torch.from_numpy(logits), 3, dim=-1)
    np.testing.assert_array_equal(ids, indices.numpy())
    np.testing.assert_allclose(weights, values.softmax(-1).numpy(), rtol=1e-6)


@pytest.mark.slow  # transformers
def test_routing_in_order_matches_transformers(tiny_checkpoint):
    """Every token's experts in every layer are transformers' router_indices, in the same order, with its scores."""
    folder, hf_model = tiny_checkpoint("gpt_oss")
    model = deeproots.load(folder, reference=True)
    ids = model.tokenize(TEXT)
    ours, theirs = [], []
    for block in model.net.blocks:
        original = block.moe.route
        block.moe.route = lambda h, original=original: ours.append(original(h)) or ours[-1]
    hooks = [layer.mlp.router.register_forward_hook(lambda module, args, out: theirs.append(out))
             for layer in hf_model.model.layers]
    try:
        model.logits(ids)
        with torch.no_grad():
            hf_model(torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(ours) == len(theirs) == len(hf_model.model.layers)
    for layer, ((our_ids, our_weights), (_, scores, indices)) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(our_ids, indices.numpy(), err_msg=f"layer {layer}")
        np.testing.assert_allclose(our_weights, scores.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"layer {layer}")


@pytest.mark.slow  # transformers
def test_clamped_swiglu_matches_transformers():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    experts = GptOssExperts(GptOssConfig(hidden_size=8, intermediate_size=16, num_local_experts=1))
    assert (experts.alpha, experts.limit) == (SWIGLU_ALPHA, SWIGLU_LIMIT)
    interleaved = torch.randn(40, 32) * 6  # beyond the clamps too
    expected = experts._apply_gate(interleaved).numpy()
    ours = clamped_swiglu(torch.cat([interleaved[:, ::2], interleaved[:, 1::2]], dim=1).numpy(),
                          SWIGLU_ALPHA, SWIGLU_LIMIT)  # our [gate | up], as the converter splits them
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # transformers
@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("head_dim, theta, factor", [(64, 150000.0, 32.0), (32, 10000.0, 4.0), (128, 1e6, 8.0)])
def test_yarn_frequencies_match_transformers(head_dim, theta, factor, truncate):
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "truncate": truncate}
    config = GptOssConfig(head_dim=head_dim, rope_parameters=rope, max_position_embeddings=131072)
    expected, expected_scale = ROPE_INIT_FUNCTIONS["yarn"](config)
    inv_freq, scale = yarn_frequencies(YarnScaling(factor, 4096, truncate=truncate), head_dim, theta)
    np.testing.assert_allclose(inv_freq, expected.numpy(), rtol=1e-6)
    assert scale == pytest.approx(expected_scale, rel=1e-12)


def copy_of(tmp_path, tiny_checkpoint, **changes):
    copy = tmp_path / "gpt_oss"
    shutil.copytree(tiny_checkpoint("gpt_oss")[0], copy)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.slow  # transformers checkpoints
@pytest.mark.parametrize("changes, message", [
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
    ({"swiglu_limit": 5.0}, "swiglu_limit"),
    ({"rope_parameters": {"truncate": True}}, "truncate"),
    ({"rope_parameters": {"attention_factor": 2.0}}, "attention_factor"),
])
def test_what_the_model_does_not_compute_is_refused(tmp_path, tiny_checkpoint, changes, message):
    with pytest.raises(UnsupportedModelError, match=message):
        deeproots.load(copy_of(tmp_path, tiny_checkpoint, **changes))


@pytest.mark.slow  # transformers checkpoints
def test_expert_tensors_that_do_not_fit_name_the_tensor(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file, save_file

    folder = copy_of(tmp_path, tiny_checkpoint)
    tensors = load_file(folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate_inp.weight holds 8 experts.*gpt-oss.expert_count"):
        deeproots.load(copy_of(tmp_path / "count", tiny_checkpoint, num_local_experts=6))
    tensors["model.layers.0.mlp.experts.gate_up_proj_bias"] = tensors["model.layers.0.mlp.experts.gate_up_proj_bias"][:, :-2]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match="blk.0.ffn_gate_exps.bias"):
        deeproots.load(folder)
    for name in ("gate_up_proj_bias", "down_proj_bias"):
        del tensors[f"model.layers.0.mlp.experts.{name}"]
    save_file(tensors, folder / "model.safetensors")  # experts without biases: a model of its own, which loads
    assert deeproots.load(folder, reference=True).net.blocks[0].moe.gate_up_bias is None
